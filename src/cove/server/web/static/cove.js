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
// A Space that builds or starts: poll its runtime and show the new page when the stage moves;
// meanwhile keep the open build log current (read from this page, as its owner sees it).
const space = document.querySelector(".space[data-poll]");
if (space) {
  const runtime = `/api/spaces/${space.dataset.spaceId}/runtime`;
  const tick = async () => {
    try {
      let fresh = null;  // this page as the server renders it now, fetched at most once a tick
      const page = async () => fresh ??= new DOMParser().parseFromString(
        await (await fetch(location.href, { cache: "no-store" })).text(), "text/html");
      const answer = await fetch(runtime, { cache: "no-store" });
      // A private Space's runtime API wants a token: the page, read with this session, says it.
      const stage = answer.ok ? (await answer.json()).stage
        : (await page()).querySelector(".space")?.dataset.stage;
      if (stage !== space.dataset.stage) {
        location.reload();
        return;
      }
      const log = document.getElementById("space-logs");
      if (log && log.closest("details").open) {
        const text = (await page()).getElementById("space-logs")?.textContent;
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        if (text !== undefined) log.textContent = text;
        if (atEnd) log.scrollTop = log.scrollHeight;
      }
    } catch (e) { /* the server restarts: try again at the next tick */ }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}
