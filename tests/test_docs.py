"""The docs cannot drift from the code: docs/troubleshooting.md has an entry for every error code the gateway can
answer with, and none for a code it no longer has; it names every reason the audit trail records for a refusal;
every relative link in README.md and docs/ resolves, anchors included; and every `tollbooth …` command the docs
show is a real verb with real flags.

The codes and reasons are read from gateway/ at test time (an AST walk over the calls that build refusals), so a
new error code fails here until it is documented."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.proxy import stamp

REPO = Path(__file__).resolve().parent.parent
GATEWAY = REPO / "gateway"
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
DOC_FILES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
# The agent SDK reads errors and the demo's stand-in API answers its own: neither is the gateway answering.
NOT_THE_GATEWAY = (GATEWAY / "client", GATEWAY / "demo.py")

# Calls whose literal argument is an error code an agent receives: callee → (position, keyword).
CODE_ARGUMENTS = {
    "OAuthError": (0, "error"),  # the token service (RFC 6749 §5.2)
    "Refusal": (1, "error"),  # every refusal of the proxy (gateway/proxy/answers.py)
    "UpstreamError": (1, "reason"),  # answered as the error of a 502/504
    "HostRefused": (1, "error"),  # a Host or Origin the proxy does not answer for (gateway/hosts.py)
    "HeadRefused": (1, "error"),  # the HTTP layer's own answers (gateway/proxy/protocol.py)
}
# Calls whose literal argument is the `reason` of the audit event a refusal writes.
REASON_ARGUMENTS = {
    "InvalidToken": (0, "reason"),
    "Refusal": (-1, "reason"),  # keyword only
    "UpstreamError": (1, "reason"),
    "HostRefused": (3, "reason"),
    "HeadRefused": (3, "reason"),
    "_invalid_request": (0, "reason"),
    "_invalid_token": (0, "reason"),
    "invalid_request": (1, "reason"),
    "invalid_client": (1, "reason"),
    "invalid_scope": (1, "reason"),
    "record_refusal": (3, "reason"),
    "on_refuse": (3, "reason"),
    "OAuthError": (-1, "reason"),  # keyword only: without it the reason is the error code
}
# ... and the HTTP status it comes with (OAuthError's default is 400).
STATUS_ARGUMENTS = {
    "Refusal": (0, "status"),
    "UpstreamError": (0, "status"),
    "HostRefused": (0, "status"),
    "HeadRefused": (0, "status"),
}
# A JSON error body written out by hand.
_JSON_ERROR = re.compile(r'"error":\s*"([a-z_]+)"')
_CODE = re.compile(r"^[a-z][a-z_]*$")

CORE_CODES = {
    "invalid_request",
    "missing_token",
    "invalid_token",
    "insufficient_scope",
    "no_matching_route",
    "request_too_large",
    "request_header_fields_too_large",
    "upstream_unreachable",
    "upstream_timeout",
    "audit_unavailable",
    "revocations_unavailable",
    "invalid_client",
    "invalid_grant",
    "invalid_scope",
    "invalid_target",
    "unauthorized_client",
    "unsupported_grant_type",
    "temporarily_unavailable",
}
CORE_REASONS = {"expired", "revoked", "unknown_kid", "bad_signature", "path_rejected", "bad_secret", "reused"}


# --- what the source emits -----------------------------------------------------------------------------------------


def _gateway_sources() -> list[Path]:
    return [
        path
        for path in sorted(GATEWAY.rglob("*.py"))
        if not any(path == skip or skip in path.parents for skip in NOT_THE_GATEWAY)
    ]


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if 0 <= position < len(call.args):
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _text(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _number(node: ast.expr | None) -> int | None:
    value = node.value if isinstance(node, ast.Constant) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _refusal(call: ast.Call, table: dict[str, tuple[int, str]]) -> str | None:
    """The literal code or reason `call` refuses with, per `table`; a `Decision(False, status, reason, …)` too."""
    name = _callee(call)
    if name == "Decision":
        denied = len(call.args) > 2 and isinstance(call.args[0], ast.Constant) and call.args[0].value is False
        return _text(call.args[2]) if denied else None
    return _text(_argument(call, *table[name])) if name in table else None


def _status(call: ast.Call) -> int | None:
    name = _callee(call)
    if name == "Decision":
        return _number(call.args[1]) if len(call.args) > 1 else None
    if name == "OAuthError":
        given = _argument(call, -1, "status")
        return 400 if given is None else _number(given)
    return _number(_argument(call, *STATUS_ARGUMENTS[name])) if name in STATUS_ARGUMENTS else None


def _error_members(node: ast.Dict) -> Iterator[str]:
    """Codes in a dict literal written as a body: `{"error": "not_found"}`."""
    for key, value in zip(node.keys, node.values, strict=True):
        code = _text(value)
        if key is not None and _text(key) == "error" and code is not None and _CODE.match(code):
            yield code


def _trees() -> Iterator[ast.AST]:
    for path in _gateway_sources():
        yield ast.parse(path.read_text(), filename=str(path))


def emitted_codes() -> dict[str, set[int]]:
    """Every error code the gateway can answer with → the HTTP statuses it comes with, where the source says."""
    codes: dict[str, set[int]] = {}
    for tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (code := _refusal(node, CODE_ARGUMENTS)) is not None:
                status = _status(node)
                codes.setdefault(code, set()).update(() if status is None else (status,))
            elif isinstance(node, ast.Dict):
                for code in _error_members(node):
                    codes.setdefault(code, set())
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                for code in _JSON_ERROR.findall(node.value):
                    codes.setdefault(code, set())
    return codes


def recorded_reasons() -> set[str]:
    """Every literal `reason` a refusal writes to the audit trail."""
    return {
        reason
        for tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and (reason := _refusal(node, REASON_ARGUMENTS)) is not None
    }


# --- what the docs say ---------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_HEADING = re.compile(r"^###\s+(\d{3})\s+`([a-z_]+)`")


def _prose_and_code(text: str) -> tuple[list[str], list[str]]:
    """The lines outside fenced code blocks, and those inside."""
    prose: list[str] = []
    code: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return prose, code


def documented_codes() -> dict[str, set[int]]:
    """The entries of troubleshooting.md: `### <status> `<code>`` headings, code → statuses."""
    entries: dict[str, set[int]] = {}
    for line in _prose_and_code(TROUBLESHOOTING.read_text())[0]:
        match = _CODE_HEADING.match(line)
        if match:
            entries.setdefault(match.group(2), set()).add(int(match.group(1)))
    return entries


def test_the_collectors_find_the_known_codes_and_reasons() -> None:
    """Guards the two collectors below: were a builder renamed, they would find nothing and prove nothing."""
    assert CORE_CODES <= emitted_codes().keys()
    assert CORE_REASONS <= recorded_reasons()
    assert CORE_CODES <= documented_codes().keys()


def test_every_error_code_the_gateway_emits_has_a_troubleshooting_entry() -> None:
    missing = sorted(emitted_codes().keys() - documented_codes().keys())
    assert not missing, f"add a `### <status> `<code>`` entry to docs/troubleshooting.md for: {', '.join(missing)}"


def test_every_troubleshooting_entry_is_a_code_the_gateway_emits() -> None:
    stale = sorted(documented_codes().keys() - emitted_codes().keys())
    assert not stale, f"docs/troubleshooting.md documents codes the gateway no longer emits: {', '.join(stale)}"


def test_troubleshooting_entries_give_the_status_the_source_uses() -> None:
    emitted = emitted_codes()
    wrong = {
        code: (sorted(statuses), sorted(emitted[code]))
        for code, statuses in documented_codes().items()
        if emitted.get(code) and not statuses <= emitted[code]
    }
    assert not wrong, f"code: (documented statuses, statuses in the source): {wrong}"


def test_every_refusal_reason_in_the_audit_trail_is_explained() -> None:
    named = set(re.findall(r"`([a-z0-9_]+)`", TROUBLESHOOTING.read_text()))
    missing = sorted(recorded_reasons() - named)
    assert not missing, f"docs/troubleshooting.md never names these audit reasons: {', '.join(missing)}"


# --- links ---------------------------------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower-cased, punctuation dropped, spaces to hyphens,
    and -1, -2, … for repeats."""
    anchors: set[str] = set()
    for line in _prose_and_code(text)[0]:
        match = _HEADING.match(line)
        if not match:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def relative_links(doc: Path) -> Iterator[tuple[str, Path, str]]:
    """(link as written, file it names, anchor) for each link in `doc` that is not a URL."""
    for line in _prose_and_code(doc.read_text())[0]:
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if _SCHEME.match(target):
                continue
            path, _, anchor = target.partition("#")
            yield target, (doc.parent / path).resolve() if path else doc, anchor


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target, path, anchor in relative_links(doc):
        if not path.exists():
            broken.append(f"{target} (no {path.relative_to(REPO) if path.is_relative_to(REPO) else path})")
        elif anchor and path.suffix == ".md" and anchor not in github_anchors(path.read_text()):
            broken.append(f"{target} (no heading #{anchor} in {path.name})")
    assert not broken, f"{doc.relative_to(REPO)}: broken links: {'; '.join(broken)}"


def test_the_anchor_rules_match_githubs() -> None:
    lines = ["# Tollbooth", "## `routes` and `routes_file` — the scope rules", "## Runbook: one machine"]
    text = "\n".join([*lines, "## Runbook: one machine", "```", "# not a heading", "```"])
    assert github_anchors(text) == {
        "tollbooth",
        "routes-and-routes_file--the-scope-rules",
        "runbook-one-machine",
        "runbook-one-machine-1",
    }


# --- `tollbooth …` command lines -----------------------------------------------------------------------------------

_SEPARATORS = {"|", "||", "&&", ";", "(", "--", "do", "then"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_VERB_LIKE = re.compile(r"^[a-z][a-z-]*$")
_SHELL_COMMENT = re.compile(r"(^|\s)#.*$")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to list sub-commands; its actions are the documented source of --help.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(_SHELL_COMMENT.sub("", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in prose or output: plain words still find the command
        return line.split()


def command_lines(doc: Path) -> Iterator[str]:
    """Shell lines of fenced blocks (continuations joined, `$ ` prompts dropped) and inline code spans."""
    prose, code = _prose_and_code(doc.read_text())
    pending = ""
    for line in code:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield re.sub(r"^\s*\$ ", "", pending + line)
        pending = ""
    for line in prose:
        yield from re.findall(r"`([^`]+)`", line)


def problems_in(line: str, parser: argparse.ArgumentParser) -> Iterator[str]:
    """What is wrong with each `tollbooth …` invocation in one shell line."""
    words = _words(line)
    verbs = _subcommands(parser)
    for i, word in enumerate(words):
        if word != "tollbooth" and not word.endswith("/tollbooth"):
            continue
        at_command = i == 0 or words[i - 1] in _SEPARATORS or bool(_ASSIGNMENT.match(words[i - 1]))
        rest = words[i + 1 :]
        if not rest or (rest[0] not in verbs and not (at_command and _VERB_LIKE.match(rest[0]))):
            continue  # `tollbooth` as a name (an image, a namespace, a release), not the command
        if rest[0] not in verbs:
            yield f"`tollbooth {rest[0]}` is not a command (known: {', '.join(sorted(verbs))})"
            continue
        command, args = verbs[rest[0]], rest[1:]
        actions = _subcommands(command)
        if actions and args and not args[0].startswith("-"):
            if args[0] not in actions:
                yield f"`tollbooth {rest[0]} {args[0]}` is not a command (known: {', '.join(sorted(actions))})"
                continue
            command, args = actions[args[0]], args[1:]
        known = _options(command)
        for arg in args:
            if set(arg) <= set("();<>|&"):
                break  # the end of this command
            flag = arg.split("=", 1)[0]
            if flag.startswith("-") and len(flag) > 1 and flag not in known:
                yield f"`{flag}` is not an option of `tollbooth {rest[0]}` (options: {', '.join(sorted(known))})"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_tollbooth_command_in_the_docs_is_real(doc: Path) -> None:
    parser = build_parser()
    wrong = [f"{line.strip()!r}: {problem}" for line in command_lines(doc) for problem in problems_in(line, parser)]
    assert not wrong, f"{doc.relative_to(REPO)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("tollbooth keys rotate --config c.yaml --dry-run", []),
        ("TOKEN=$(.venv/bin/tollbooth token --config c.yaml --agent a --scope x)", []),
        ("kubectl exec pod -c issuer -- tollbooth revoke --agent a | tee log", []),
        ("helm install tollbooth ./helm/tollbooth -f values.yaml", []),
        ("docker exec tollbooth tollbooth audit tail -n 5", []),
        ("tollbooth revoke --user alice", ["`--user` is not an option of `tollbooth revoke`"]),
        ("tollbooth keys rotat", ["`tollbooth keys rotat` is not a command"]),
        ("echo x | tollbooth hash-secrets", ["`tollbooth hash-secrets` is not a command"]),
    ],
)
def test_the_command_checker_catches_wrong_verbs_and_flags(line: str, expected: list[str]) -> None:
    found = list(problems_in(line, build_parser()))
    assert [problem.split(" (")[0] for problem in found] == expected


def test_every_header_the_proxy_strips_is_listed_in_the_configuration_docs() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    names = [n.decode() for n in stamp.SPOOFABLE_REQUEST_HEADERS | stamp.CLIENT_ADDRESS_HEADERS]
    names += [p.decode() + "*" for p in stamp.SPOOFABLE_REQUEST_PREFIXES]
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert not missing, f"docs/configuration.md does not list: {missing}"
