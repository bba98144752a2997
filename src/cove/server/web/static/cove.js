// Progressive enhancement only: every page works without this file.
document.addEventListener("change", (e) => {
  // Filters and selectors apply on change instead of waiting for their button.
  if (e.target.matches("select[data-autosubmit]")) e.target.form.submit();
});
document.addEventListener("click", (e) => {
  const button = e.target.closest("[data-copy]");
  if (!button) return;
  const field = document.querySelector(button.dataset.copy);
  navigator.clipboard.writeText(field.value).then(() => { button.textContent = "Copied"; });
});
