"""The `cove` command: one table of verbs, each a plain function taking parsed arguments."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any


def _settings(args):
    from cove.server.config import Settings

    return Settings(data_dir=args.data, database_url=args.database_url or "")


def serve(args) -> int:
    """Start the Hub server."""
    import uvicorn

    from cove.server import create_app

    settings = _settings(args)
    settings.serving = not args.no_serving
    if args.no_spaces:
        settings.spaces = False
    if args.no_join:
        settings.allow_join = False
    app = create_app(settings)
    spaces = getattr(app.state, "spaces", None)
    if spaces is not None and not spaces.options.hub_url:
        # Spaces call this Hub back (HF_ENDPOINT) on loopback when it listens everywhere.
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        spaces.options.hub_url = f"http://{host}:{args.port}"
    if not args.no_demo:
        from cove.server.demo import import_demo

        import_demo(app.state.hub)  # a first start only: see cove/server/demo.py
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level == "debug")
    return 0


def serve_model(args) -> int:
    """Serve one model alone on the inference endpoints, as `llama-server -m` does: a folder,
    a .gguf file or a repository id (downloaded from --endpoint), under --alias."""
    from pathlib import Path

    import uvicorn

    from cove.server import create_app

    path = Path(args.model).expanduser()
    if not path.exists():
        if args.model.count("/") != 1 or args.model.startswith((".", "/")):
            raise CliError(f"{args.model}: no such folder or file (and not a repository id).")
        from cove import hub

        path = Path(hub.snapshot_download(args.model, revision=args.revision,
                                          endpoint=args.endpoint, token=args.token))
    alias = args.alias or (args.model if not Path(args.model).exists()
                           else path.resolve().stem if path.is_file() else path.resolve().name)
    settings = _settings(args)
    app = create_app(settings)
    registry = app.state.serving
    registry.max_batch_size = args.max_batch_size
    try:
        registry.add_local(alias, path)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(f"cove serve-model: loading {path} as {alias!r}", file=sys.stderr, flush=True)
    registry.get(alias, None)  # load now: errors show at start, the first request is not slow
    print(f"cove serve-model: {alias!r} on http://{args.host}:{args.port}/v1",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level == "debug")
    return 0


def _hub(args):
    from cove.server.hub import Hub

    return Hub(_settings(args))


def admin_user_create(args) -> int:
    from cove.server import admin

    password = args.password
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    admin.create_account(_hub(args), args.name, "user", args.fullname or "", args.email, password)
    print(f"created user {args.name}")
    return 0


def admin_org_create(args) -> int:
    from cove.server import admin

    hub = _hub(args)
    admin.create_account(hub, args.name, "org", args.fullname or "")
    for member in args.member or []:
        admin.add_member(hub, args.name, member)
    print(f"created organisation {args.name}")
    return 0


def admin_org_add(args) -> int:
    from cove.server import admin

    admin.add_member(_hub(args), args.org, args.user, args.role)
    print(f"{args.user} is a member of {args.org} ({args.role})")
    return 0


def admin_token_create(args) -> int:
    from cove.server import admin

    token = admin.create_token(_hub(args), args.user, args.role, args.name)
    print(token)  # the only time the plain token exists; the server keeps its hash
    return 0


def admin_token_list(args) -> int:
    from cove.server import admin

    for name, role, created in admin.list_tokens(_hub(args), args.user):
        print(f"{name}\t{role}\t{created}")
    return 0


def admin_token_revoke(args) -> int:
    from cove.server import admin

    n = admin.revoke_token(_hub(args), args.user, args.name)
    print(f"revoked {n} token(s)")
    return 0


# -- the hub client: login, download, upload, repositories, listings -----------------------


class CliError(Exception):
    """A mistake in how a verb was called: printed as `cove: <message>`, exit 1."""


def _api(args):
    from cove.hub import HubApi

    return HubApi(endpoint=args.endpoint, token=args.token)


def login(args) -> int:
    """Check a token with the Hub and save it (from --token, the terminal, or stdin)."""
    import getpass

    from cove import hub

    token = args.token
    if token is None:
        if sys.stdin.isatty():
            token = getpass.getpass("Token (input hidden): ")
        else:  # piped: `cove login < token.txt`, `echo $TOKEN | cove login`
            token = sys.stdin.readline()
    if not token.strip():
        raise CliError("no token given: pass --token, type it when asked, or pipe it on stdin.")
    hub.login(token, endpoint=args.endpoint)  # says who; never prints the token
    return 0


def logout(args) -> int:
    from cove import hub

    hub.logout()
    return 0


def whoami(args) -> int:
    """The account behind the token, and its organisations."""
    from cove.hub import get_token

    token = args.token or get_token()
    if not token:
        raise CliError("not logged in: run `cove login`, or set COVE_TOKEN / HF_TOKEN.")
    info = _api(args).whoami(token)
    print(info["name"])
    orgs = [o["name"] for o in info.get("orgs") or []]
    if orgs:
        print(f"orgs: {','.join(orgs)}")
    return 0


def download(args) -> int:
    """One file -> hf_hub_download, several or none -> snapshot_download; prints the path."""
    from cove import hub

    if args.quiet:
        os.environ["COVE_DISABLE_PROGRESS_BARS"] = "1"
    common = dict(repo_type=args.repo_type, revision=args.revision, cache_dir=args.cache_dir,
                  local_dir=args.local_dir, token=args.token, endpoint=args.endpoint,
                  force_download=args.force_download)
    if args.files and (args.include or args.exclude):
        print("cove: --include/--exclude are ignored when file names are given.", file=sys.stderr)
    if len(args.files) == 1:
        path = hub.hf_hub_download(args.repo_id, args.files[0], **common)
    else:
        path = hub.snapshot_download(
            args.repo_id, allow_patterns=args.files or args.include or None,
            ignore_patterns=None if args.files else args.exclude or None, **common)
    print(path)  # the only thing on stdout: `dir=$(cove download ...)`
    return 0


def upload(args) -> int:
    """A file -> upload_file, a folder -> upload_folder; creates the repo; prints the commit URL."""
    from pathlib import Path

    local = Path(args.path)
    if not local.exists():
        raise CliError(f"{args.path} is not a file or folder.")
    api = _api(args)
    repo = api.create_repo(args.repo_id, repo_type=args.repo_type, private=args.private,
                           exist_ok=True, space_sdk="gradio" if args.repo_type == "space" else None)
    repo_id = repo.repo_id  # with its namespace, when only a name was given
    if args.revision and not api.revision_exists(repo_id, args.revision,
                                                 repo_type=args.repo_type):
        api.create_branch(repo_id, branch=args.revision, repo_type=args.repo_type, exist_ok=True)
    common = dict(repo_id=repo_id, repo_type=args.repo_type, revision=args.revision,
                  commit_message=args.commit_message,
                  commit_description=args.commit_description)
    if local.is_file():
        if args.include or args.exclude or args.delete:
            print("cove: --include/--exclude/--delete apply to folders; ignored for a file.",
                  file=sys.stderr)
        info = api.upload_file(path_or_fileobj=str(local),
                               path_in_repo=args.path_in_repo or local.name, **common)
    else:
        info = api.upload_folder(folder_path=local, path_in_repo=args.path_in_repo,
                                 allow_patterns=args.include or None,
                                 ignore_patterns=args.exclude or None,
                                 delete_patterns=args.delete or None, **common)
    print(info.commit_url)
    return 0


def repo_create(args) -> int:
    if args.repo_type == "space" and not args.space_sdk:
        raise CliError("a Space needs --space-sdk: gradio, streamlit, docker or static.")
    url = _api(args).create_repo(args.repo_id, repo_type=args.repo_type,
                                 private=args.private, exist_ok=args.exist_ok,
                                 space_sdk=args.space_sdk)
    print(url)
    return 0


def repo_delete(args) -> int:
    _api(args).delete_repo(args.repo_id, repo_type=args.repo_type, missing_ok=args.missing_ok)
    print(f"deleted {args.repo_type} repository {args.repo_id}")
    return 0


def _listing(api, repo_type: str, **kwargs):
    method = {"model": api.list_models, "dataset": api.list_datasets,
              "space": api.list_spaces}[repo_type]
    return method(**kwargs)


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


def _table(headers: list[str], rows: list[list]) -> None:
    """Columns aligned on the widest cell; numbers right-aligned."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(c) for c in col) for col in zip(headers, *cells, strict=True)]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows)
               for i in range(len(headers))]
    for row in [headers, *cells]:
        print("  ".join(c.rjust(w) if num else c.ljust(w)
                        for c, w, num in zip(row, widths, numeric, strict=True)).rstrip())


def repo_ls(args) -> int:
    """The repositories of the caller (or --author), private ones included where visible."""
    api = _api(args)
    author = args.author or api.whoami()["name"]
    rows = [[r.id, "private" if r.private else "public", r.downloads or 0, _when(r.last_modified)]
            for r in _listing(api, args.repo_type, author=author, limit=args.limit)]
    if not rows:
        print(f"cove: no {args.repo_type} repositories of {author}.", file=sys.stderr)
        return 0
    _table(["ID", "VISIBILITY", "DOWNLOADS", "LAST MODIFIED"], rows)
    return 0


def _task(info, repo_type: str) -> str:
    if repo_type == "model":
        return info.pipeline_tag or ""
    if repo_type == "space":
        return info.sdk or ""
    return ",".join(t.split(":", 1)[1] for t in info.tags or [] if t.startswith("task_categories:"))


def ls(args) -> int:
    """Models, datasets or Spaces of the Hub, as a table."""
    repo_type = args.kind.removesuffix("s")
    items = _listing(_api(args), repo_type, search=args.search, author=args.author,
                     filter=args.filter or None, sort=args.sort,
                     direction=-1 if args.sort else None, limit=args.limit)
    rows = [[i.id, i.downloads or 0, i.likes or 0, _task(i, repo_type), _when(i.last_modified)]
            for i in items]
    if not rows:
        print(f"cove: no {args.kind} found.", file=sys.stderr)
        return 0
    _table(["ID", "DOWNLOADS", "LIKES", "SDK" if repo_type == "space" else "TASK",
            "LAST MODIFIED"], rows)
    return 0


def convert_gguf(args) -> int:
    """A llama.cpp GGUF file as a Hugging Face folder (config, safetensors, tokenizer)."""
    from cove.models import gguf

    print(gguf.convert_gguf(args.file, args.out_dir, dtype=args.dtype, overwrite=args.overwrite))
    return 0


def _chat_source(args) -> tuple[str, dict]:
    """MODEL (a folder, a Hub id, or a .gguf file) -> from_pretrained's name and options."""
    model = os.path.expanduser(args.model)
    options = {"revision": args.revision} if args.revision else {}
    if args.gguf_file:
        options["gguf_file"] = args.gguf_file
    elif model.lower().endswith(".gguf") and os.path.isfile(model):
        model, options["gguf_file"] = os.path.split(os.path.abspath(model))
    local = model.startswith(("/", ".")) or model.count("/") > 1 \
        or model.lower().endswith(".gguf")  # a Hub id is `name` or `owner/name`
    if local and not os.path.exists(model):
        raise CliError(f"{args.model}: no such file or folder.")
    return model, options


def chat(args) -> int:
    """Talk with a causal LM: one user turn per line of stdin, the reply streamed to stdout.
    The model runs here, or on a Cove server (--url, its OpenAI-compatible endpoint)."""
    reply, where = _remote_replier(args) if args.url else _local_replier(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        print(f"cove chat: {args.model} {where}. /reset clears the conversation, "
              "/exit (or Ctrl-D) ends; Ctrl-C stops a reply.", file=sys.stderr)
    ctrl_c = _StopOnCtrlC()
    while True:
        try:
            line = input(">>> ") + "\n" if interactive else sys.stdin.readline()
        except EOFError:
            line = ""
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat
            if interactive:
                print()
            return 130
        if not line or line.strip() == "/exit":
            if interactive and not line:
                print()
            return 0
        text = line.strip()
        if text == "/reset":
            history = []
            if interactive:
                print("(conversation cleared)", file=sys.stderr)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        try:
            with ctrl_c.armed():
                answer = reply(system, history, ctrl_c)
        except KeyboardInterrupt:  # a second Ctrl-C before the reply stopped
            print(flush=True)  # end the reply's line
            return 130
        if ctrl_c.pressed:
            if interactive:
                print("(reply stopped; Ctrl-C at the prompt ends the chat)", file=sys.stderr)
            if not answer:  # stopped before its first word: the question goes too
                history.pop()
                continue
        # A stopped reply stays as it was shown: the conversation is what the user saw.
        history.append({"role": "assistant", "content": answer})


def _local_replier(args) -> tuple[Callable, str]:
    """The model loaded here: reply(system, history, ctrl_c) streams a reply to stdout and
    returns it; the oldest exchanges leave `history` when the context would overflow."""
    import torch

    from cove.generation import TextStreamer
    from cove.models import AutoModelForCausalLM
    from cove.tokenizers import AutoTokenizer

    name, options = _chat_source(args)
    tokenizer = AutoTokenizer.from_pretrained(name, **options)
    if tokenizer.chat_template is None:
        raise CliError(f"{args.model}'s tokenizer has no chat template: it is not a chat model.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(name, dtype=args.dtype, device=device,
                                                 **options).eval()
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)  # the template's end of turn
    settings = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos or None,
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                    else (eos[0] if eos else None))
    if args.temperature and args.temperature > 0:
        settings.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    else:
        settings.update(do_sample=False)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    limit = getattr(model.config, "max_position_embeddings", None)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

    def reply(system: list[dict], history: list[dict], ctrl_c: _StopOnCtrlC) -> str:
        while True:
            ids = tokenizer.apply_chat_template(system + history, add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"]
            if limit is None or ids.shape[1] + args.max_new_tokens <= limit or len(history) < 3:
                break
            del history[:2]  # the oldest exchange goes, to fit the context
        out = model.generate(ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                             streamer=streamer, stopping_criteria=[ctrl_c], **settings)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    return reply, f"on {device}"


def _remote_replier(args) -> tuple[Callable, str]:
    """A Cove server's /v1/chat/completions (any OpenAI-compatible server): the reply streamed
    as its server-sent events arrive; Ctrl-C closes the stream, which frees the server's slot."""
    import httpx

    from cove.hub import get_token

    url = args.url.rstrip("/")
    url = url if url.endswith("/v1") else url + "/v1"
    token = args.token or get_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    options: dict[str, Any] = {"max_tokens": args.max_new_tokens,
                               "temperature": args.temperature or 0.0}
    if args.temperature and args.temperature > 0:
        options["top_p"] = args.top_p
    if args.seed is not None:
        options["seed"] = args.seed
    model = f"{args.model}@{args.revision}" if args.revision else args.model
    client = httpx.Client(timeout=httpx.Timeout(10, read=None), headers=headers)

    def reply(system: list[dict], history: list[dict], ctrl_c: _StopOnCtrlC) -> str:
        body = {"model": model, "messages": system + history, "stream": True, **options}
        parts: list[str] = []
        try:
            with client.stream("POST", url + "/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise CliError(f"{url}: {_error_message(r)}")
                for line in r.iter_lines():
                    if ctrl_c.pressed or line == "data: [DONE]":
                        break
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise CliError(f"{url}: {event['error'].get('message')}")
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        parts.append(text)
                        print(text, end="", flush=True)
        except httpx.HTTPError as exc:
            raise CliError(f"{url}: {exc}") from None
        print(flush=True)
        return "".join(parts).strip()

    return reply, f"at {url}"


def _error_message(r: Any) -> str:
    """An error answer's message: OpenAI's {"error": {"message"}} or the Hub's header."""
    try:
        error = r.json().get("error")
        return error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return r.headers.get("x-error-message") or f"HTTP {r.status_code}"


_CHAT_DESCRIPTION = (
    "Chat with a causal LM: one user turn per line of stdin, each reply streamed to stdout (a "
    "terminal gets a prompt and line editing). /reset clears the conversation; /exit or Ctrl-D "
    "ends it. Ctrl-C during a reply stops it and returns to the prompt: the words shown so far "
    "stay in the conversation as the assistant's answer (a reply stopped before its first word "
    "is dropped, with its question). Ctrl-C at the prompt, or a second one before the reply "
    "has stopped, ends the chat (exit status 130).")


class _StopOnCtrlC:
    """Ctrl-C during a reply: the first ends the reply at its next token (generate checks this
    stopping criterion every step, so the reply and the model are left whole); a second one
    before that raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.pressed = False

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.pressed, dtype=torch.bool,
                          device=input_ids.device)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Ctrl-C handled as above inside the block; as before it outside. A process started
        with SIGINT ignored (a background job) keeps ignoring it."""
        self.pressed = False
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _run_inputs(args) -> Iterator[str | dict]:
    """The INPUT arguments, else the lines of --file, else those of stdin (blank lines
    skipped)."""
    if args.inputs:
        yield from _parse_inputs(enumerate(args.inputs, 1), "input")
    elif args.file:
        with open(args.file, encoding="utf-8") as lines:
            yield from _parse_inputs(_unblank(lines), f"{args.file}: line")
    else:
        yield from _parse_inputs(_unblank(sys.stdin), "stdin: line")


def _task_args(pairs: list[str]) -> dict[str, Any]:
    """--arg KEY=VALUE options: VALUE as JSON when it parses (3, true, ["a","b"]), else text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"--arg {pair!r}: expected KEY=VALUE, e.g. top_k=3.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _unblank(lines: Iterator[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            yield number, line.rstrip("\r\n")


def _parse_inputs(texts: Iterator[tuple[int, str]], where: str) -> Iterator[str | dict]:
    """Texts as they are, except those that start with "{": JSON objects, the task's keyword
    inputs (e.g. {"question": ..., "context": ...} for question-answering)."""
    for number, text in texts:
        if not text.lstrip().startswith("{"):
            yield text
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise CliError(f"{where} {number} starts with '{{' but is not a JSON object "
                           f"({e.msg}, column {e.colno}).") from None
        if not isinstance(value, dict):
            raise CliError(f"{where} {number} starts with '{{' but is not a JSON object.")
        yield value


def run(args) -> int:
    """Run a task pipeline on inputs: one JSON line of results per input, in input order."""
    from cove.pipelines import pipeline

    if args.batch_size is not None and args.batch_size < 1:
        raise CliError("--batch-size must be at least 1.")
    if args.inputs and args.file:  # (before the model loads, not at the first input)
        raise CliError("give INPUT arguments or --file, not both.")
    if args.file and not os.path.isfile(args.file):
        raise CliError(f"{args.file}: no such file.")
    try:
        pipe = pipeline(args.task, model=args.model, revision=args.revision,
                        device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                        **_task_args(args.arg or []))
    except TypeError as e:  # an --arg the task does not take
        raise CliError(str(e)) from None
    # A generator: results come as each chunk of inputs is done, not at the end.
    for result in pipe(_run_inputs(args)):
        print(json.dumps(result, ensure_ascii=False, default=_as_list), flush=True)
    return 0


def launch(args) -> int:
    """Run a training script on several processes (torchrun), Cove's settings in its environment."""
    import subprocess

    from cove.accelerate.launchers import torchrun_command

    command, env = torchrun_command(
        args.script, args.script_args, nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
        node_rank=args.node_rank, master_addr=args.master_addr, master_port=args.master_port,
        mixed_precision=args.mixed_precision, use_fsdp=args.use_fsdp, cpu=args.cpu)
    return subprocess.run(command, env=env).returncode


def _as_list(value: Any) -> Any:
    """JSON for what json cannot write: tensors and numpy values (return_tensors=True)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=os.environ.get("COVE_DATA", "./data"),
                   help="data folder (repositories, LFS objects, SQLite database)")
    p.add_argument("--database-url", default=os.environ.get("COVE_DATABASE_URL"),
                   help="SQLAlchemy URL of the metadata database (default: SQLite in --data)")


def _hub_options(p: argparse.ArgumentParser, token: bool = True) -> None:
    p.add_argument("--endpoint", help="the Hub's URL (default: COVE_ENDPOINT / HF_ENDPOINT, "
                   "else https://huggingface.co)")
    if token:
        p.add_argument("--token", help="access token (default: COVE_TOKEN / HF_TOKEN, else the "
                       "one saved by `cove login`)")


def _repo_type(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo-type", "--type", dest="repo_type", default="model",
                   choices=["model", "dataset", "space"])


def _patterns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--include", nargs="+", action="extend", metavar="PATTERN",
                   help="only files matching these glob patterns")
    p.add_argument("--exclude", nargs="+", action="extend", metavar="PATTERN",
                   help="leave out files matching these glob patterns")


def sft(args: argparse.Namespace) -> int:
    from cove.trl.scripts import main as train

    return train("sft", args.rest)


def dpo(args: argparse.Namespace) -> int:
    from cove.trl.scripts import main as train

    return train("dpo", args.rest)


def _own_flags(p: argparse.ArgumentParser) -> None:
    """The verb parses its own flags (and --help): they are the trainer config's many fields."""
    p.set_defaults(passthrough=True)


_own_flags.own_flags = True  # type: ignore[attr-defined]  (read by build_parser)
# verb -> (function, help, argument adder)
VERBS: dict[str, tuple[Callable, str, Callable[[argparse.ArgumentParser], None]]] = {
    "serve": (serve, "run the Hub server", lambda p: (
        p.add_argument("--host", default="127.0.0.1"),
        p.add_argument("--port", type=int, default=8000),
        p.add_argument("--log-level", default="info"),
        p.add_argument("--no-serving", action="store_true",
                       help="do not serve models (no OpenAI-compatible /v1 endpoints)"),
        p.add_argument("--no-demo", action="store_true",
                       help="on a first start (empty data folder), do not import the demo "
                       "content (SmolLM2-135M-Instruct, all-MiniLM-L6-v2, an Iris dataset)"),
        p.add_argument("--no-spaces", action="store_true",
                       help="do not run Space apps (or COVE_SPACES=0); their repositories "
                       "stay readable"),
        p.add_argument("--no-join", action="store_true",
                       help="no sign-up page (/join): accounts only from `cove admin` "
                       "(or COVE_ALLOW_JOIN=0)"),
        _server_options(p),
    )),
    "serve-model": (serve_model, "serve one model (folder, .gguf or repo id) on the inference "
                    "endpoints alone", lambda p: (
        p.add_argument("model", help="a model folder, a .gguf file, or a repository id"),
        p.add_argument("--alias", help="the name clients give as `model` (default: the folder's "
                       "or file's name, or the repository id)"),
        p.add_argument("--host", default="127.0.0.1"),
        p.add_argument("--port", type=int, default=8080),
        p.add_argument("--max-batch-size", type=int, default=16,
                       help="requests decoded together (more wait in a queue)"),
        p.add_argument("--revision", help="of a repository id"),
        p.add_argument("--log-level", default="info"),
        p.add_argument("--data", default=os.environ.get(
            "COVE_SERVE_MODEL_DATA", os.path.expanduser("~/.cache/cove/serve-model")),
            help="working folder (converted GGUF files are kept here)"),
        p.add_argument("--database-url", default=None, help=argparse.SUPPRESS),
        _hub_options(p),
    )),
    "admin user create": (admin_user_create, "create a user", lambda p: (
        p.add_argument("name"), p.add_argument("--fullname"), p.add_argument("--email"),
        p.add_argument("--password", help="a password to sign in on the web pages"),
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of stdin"),
        _server_options(p),
    )),
    "admin org create": (admin_org_create, "create an organisation", lambda p: (
        p.add_argument("name"), p.add_argument("--fullname"),
        p.add_argument("--member", action="append", help="a user to add (repeatable)"),
        _server_options(p),
    )),
    "admin org add-member": (admin_org_add, "add a user to an organisation", lambda p: (
        p.add_argument("org"), p.add_argument("user"),
        p.add_argument("--role", default="write", choices=["read", "write", "admin"]),
        _server_options(p),
    )),
    "admin token create": (admin_token_create, "create an access token (printed once)", lambda p: (
        p.add_argument("user"), p.add_argument("--role", default="read", choices=["read", "write"]),
        p.add_argument("--name", default="default"), _server_options(p),
    )),
    "admin token list": (admin_token_list, "list a user's tokens", lambda p: (
        p.add_argument("user"), _server_options(p),
    )),
    "admin token revoke": (admin_token_revoke, "revoke a user's tokens by name", lambda p: (
        p.add_argument("user"), p.add_argument("--name", required=True), _server_options(p),
    )),
    "login": (login, "save an access token (from --token, the terminal, or stdin)", lambda p: (
        p.add_argument("--token", help="the token (default: asked for, or read from stdin)"),
        _hub_options(p, token=False),
    )),
    "logout": (logout, "forget the saved token", lambda p: _hub_options(p, token=False)),
    "whoami": (whoami, "show the account behind the token, and its organisations",
               _hub_options),
    "download": (download, "download files of a repository; prints the local path", lambda p: (
        p.add_argument("repo_id", metavar="REPO"),
        p.add_argument("files", nargs="*", metavar="FILE",
                       help="files to download (default: the whole repository)"),
        _patterns(p), _repo_type(p),
        p.add_argument("--revision", help="branch, tag or commit (default: main)"),
        p.add_argument("--local-dir", help="put the files in this folder, not the cache"),
        p.add_argument("--cache-dir", help="the cache folder (default: COVE_HOME/hub)"),
        p.add_argument("--force-download", action="store_true"),
        p.add_argument("--quiet", action="store_true", help="no progress bars"),
        _hub_options(p),
    )),
    "upload": (upload, "upload a file or folder (creating the repository); prints the commit URL",
               lambda p: (
        p.add_argument("repo_id", metavar="REPO"),
        p.add_argument("path", metavar="PATH", help="a local file or folder"),
        p.add_argument("path_in_repo", nargs="?", metavar="PATH_IN_REPO",
                       help="where it goes (default: the file's name, or the root for a folder)"),
        _repo_type(p),
        p.add_argument("--revision", help="branch to commit to (created if missing)"),
        p.add_argument("--private", action="store_true", help="create the repository private"),
        p.add_argument("--commit-message"), p.add_argument("--commit-description"),
        _patterns(p),
        p.add_argument("--delete", nargs="+", action="extend", metavar="PATTERN",
                       help="remote files to delete in the same commit (folders only)"),
        _hub_options(p),
    )),
    "repo create": (repo_create, "create a repository; prints its URL", lambda p: (
        p.add_argument("repo_id", metavar="NAME", help="'name' (yours) or 'namespace/name'"),
        _repo_type(p), p.add_argument("--private", action="store_true"),
        p.add_argument("--space-sdk", choices=["gradio", "streamlit", "docker", "static"]),
        p.add_argument("--exist-ok", action="store_true", help="no error if it exists"),
        _hub_options(p),
    )),
    "repo delete": (repo_delete, "delete a repository", lambda p: (
        p.add_argument("repo_id", metavar="NAME"), _repo_type(p),
        p.add_argument("--missing-ok", action="store_true", help="no error if it does not exist"),
        _hub_options(p),
    )),
    "repo ls": (repo_ls, "list your repositories (or an author's)", lambda p: (
        p.add_argument("--author", help="whose (default: you)"), _repo_type(p),
        p.add_argument("--limit", type=int), _hub_options(p),
    )),
    "ls": (ls, "list models, datasets or Spaces of the Hub", lambda p: (
        p.add_argument("kind", nargs="?", default="models", choices=["models", "datasets", "spaces"]),
        p.add_argument("--search", help="text in the id"), p.add_argument("--author"),
        p.add_argument("--filter", nargs="+", action="extend", metavar="TAG",
                       help="only repositories with all these tags"),
        p.add_argument("--sort", choices=["downloads", "likes", "lastModified", "createdAt"],
                       help="highest first"),
        p.add_argument("--limit", type=int, default=30, help="at most this many (default: 30)"),
        _hub_options(p),
    )),
    "convert gguf": (convert_gguf, "convert a GGUF file (llama.cpp) to a Hugging Face folder",
                     lambda p: (
        p.add_argument("file", metavar="FILE"), p.add_argument("out_dir", metavar="OUT_DIR"),
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="the weights' dtype (default: float32)"),
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR"),
    )),
    "run": (run, "run a task pipeline: one JSON line of results per input", lambda p: (
        p.add_argument("task", metavar="TASK",
                       help="e.g. text-classification, fill-mask, question-answering"),
        p.add_argument("inputs", nargs="*", metavar="INPUT",
                       help="texts, or JSON objects such as '{\"question\": \"...\", "
                       "\"context\": \"...\"}' (default: the lines of --file or stdin)"),
        p.add_argument("--model", help="a folder or a Hub id (default: the task's model)"),
        p.add_argument("--file", help="read the inputs from this file, one per line"),
        p.add_argument("--batch-size", type=int, help="inputs per forward pass"),
        p.add_argument("--revision", help="branch, tag or commit (default: main)"),
        p.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: cpu)"),
        p.add_argument("--dtype", help="e.g. float32, bfloat16, float16, auto"),
        p.add_argument("--arg", action="append", metavar="KEY=VALUE",
                       help="a task argument (repeatable), VALUE as JSON when it parses: "
                       "top_k=3, candidate_labels='[\"sport\", \"politics\"]', "
                       "max_new_tokens=20"),
    )),
    "launch": (launch, "run a training script on N processes (torchrun: gloo on CPU, NCCL on "
               "GPUs)", lambda p: (
        p.add_argument("--nproc-per-node", type=int,
                       help="processes on this machine (default: one per GPU, else 1)"),
        p.add_argument("--nnodes", type=int, default=1, help="machines (default: 1)"),
        p.add_argument("--node-rank", type=int, default=0, help="this machine's rank (default: 0)"),
        p.add_argument("--master-addr", help="node 0's address (needed with --nnodes > 1)"),
        p.add_argument("--master-port", type=int, help="node 0's port (default: a free one on "
                       "one machine, else 29500)"),
        p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"],
                       help="the Accelerator's default (COVE_MIXED_PRECISION)"),
        p.add_argument("--use-fsdp", action="store_true",
                       help="shard the model with FSDP2 (COVE_USE_FSDP)"),
        p.add_argument("--cpu", action="store_true", help="stay on CPU, even with GPUs (COVE_USE_CPU)"),
        p.add_argument("script", metavar="SCRIPT", help="the Python training script"),
        p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS",
                       help="the script's own arguments"),
    )),
    "chat": (chat, "chat with a causal LM: a user turn per line of stdin; /reset, /exit",
             lambda p: (
        setattr(p, "description", _CHAT_DESCRIPTION),
        p.add_argument("model", metavar="MODEL", help="a folder, a Hub id, or a .gguf file; "
                       "with --url, the name the server knows the model by"),
        p.add_argument("--url", help="a Cove server (or any OpenAI-compatible one) to talk "
                       "to instead of loading the model here, e.g. http://127.0.0.1:8000"),
        p.add_argument("--token", help="the server's access token, with --url (default: "
                       "COVE_TOKEN / HF_TOKEN, else the one saved by `cove login`)"),
        p.add_argument("--gguf-file", help="the GGUF file to load in the MODEL folder or repo"),
        p.add_argument("--revision", help="branch, tag or commit (default: main)"),
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                       help="the weights' dtype (default: float32); auto keeps a GGUF file's "
                       "weights quantised (int4/int8 layers, on the CPU)"),
        p.add_argument("--device", help="e.g. cpu, cuda (default: cuda if available, else cpu)"),
        p.add_argument("--max-new-tokens", type=int, default=512,
                       help="longest reply, in tokens (default: 512)"),
        p.add_argument("--temperature", type=float, default=0.0,
                       help="0 (the default): greedy, deterministic; above 0: sampling"),
        p.add_argument("--top-p", type=float, default=0.95,
                       help="nucleus sampling, when sampling (default: 0.95)"),
        p.add_argument("--seed", type=int, help="seed for sampling (reproducible replies)"),
        p.add_argument("--system", metavar="PROMPT", help="a system prompt (kept on /reset)"),
    )),
    "sft": (sft, "supervised fine-tuning, as `trl sft`: --model_name_or_path, --dataset_name and "
            "every SFTConfig field as a flag (--help lists them)", _own_flags),
    "dpo": (dpo, "direct preference optimisation, as `trl dpo`: --model_name_or_path, "
            "--dataset_name and every DPOConfig field as a flag (--help lists them)", _own_flags),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cove", description="Cove: a self-hosted Hugging Face.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): sub}
    for verb, (func, help_, add_args) in VERBS.items():
        words = verb.split()
        for i in range(1, len(words)):
            key = tuple(words[:i])
            if key not in groups:
                p = groups[key[:-1]].add_parser(key[-1], help=f"{' '.join(key)} commands")
                groups[key] = p.add_subparsers(dest="_".join(key), metavar="VERB", required=True)
        p = groups[tuple(words[:-1])].add_parser(
            words[-1], help=help_, add_help=not getattr(add_args, "own_flags", False))
        add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("cove: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # errors that are the user's to fix: say what, not a traceback
        message = _user_error(e)
        if message is None:
            raise
        print(f"cove: {message}", file=sys.stderr)
        return 1


def _user_error(e: Exception) -> str | None:
    """One line saying what went wrong, for an error the user can act on; None for a bug."""
    # Only modules already imported can have raised: look there instead of importing more.
    kinds: list[type] = [CliError, OSError, ValueError]  # hub errors are OSErrors (HubHTTPError too)
    for module, names in (("cove.server.admin", ["AdminError"]),
                          ("cove.server.errors", ["HubError"]),
                          ("cove.hub.errors", ["EntryNotFoundError"])):
        if module in sys.modules:
            kinds += [getattr(sys.modules[module], n) for n in names]
    if "httpx" in sys.modules and isinstance(e, sys.modules["httpx"].TransportError):
        try:
            where = f"{e.request.url.scheme}://{e.request.url.netloc.decode()}"
        except RuntimeError:
            where = "the Hub"
        return f"cannot reach {where} ({e or type(e).__name__}); check --endpoint / COVE_ENDPOINT."
    if not isinstance(e, tuple(kinds)):
        return None
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(line if line[-1] in ".!?:;" or i == len(lines) - 1 else f"{line}."
                    for i, line in enumerate(lines)) or type(e).__name__

if __name__ == "__main__":
    sys.exit(main())
