"""Parse a CoreDNS Corefile into server blocks holding a tree of directives.

The syntax is CoreDNS's (Caddy v1's): server blocks of keys and a ``{ ... }`` body, one directive
per line with an optional nested block, ``#`` comments, quoted tokens, ``{$ENV}`` substitution,
snippets and ``import``. The parser knows no plugin semantics and never reorders: each plugin
validates its own directive. Every error names file:line.
"""

from __future__ import annotations

import glob
import hashlib
import ipaddress
import json
import logging
import os
import re
from dataclasses import dataclass, replace

__all__ = [
    "MAX_IMPORT_DEPTH",
    "CorefileError",
    "Directive",
    "ServerBlock",
    "ZoneAddr",
    "checksum",
    "parse",
    "parse_file",
]

log = logging.getLogger(__name__)

MAX_IMPORT_DEPTH = 100
_MAX_IMPORTS = 10_000  # snippets importing snippets can otherwise grow exponentially
_MAX_NESTING = 100  # blocks within blocks; keeps the recursion bounded
_TRANSPORTS = ("dns", "tls", "grpc", "https", "https3", "quic")
_ENV_WINDOWS = re.compile(r"\{%(.+?)%\}")
_ENV_UNIX = re.compile(r"\{\$([^}]+)\}")
_PORT = re.compile(r"[+-]?[0-9]+")
_CIDR = re.compile(r"[0-9A-Fa-f:.]+/[0-9]{1,3}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CorefileError(Exception):
    """A problem in the Corefile, located at file:line (and naming the plugin, when known)."""

    def __init__(self, message: str, file: str, line: int, plugin: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.plugin = plugin
        text = message if plugin is None else f"{plugin}: {message}"
        super().__init__(f"{file}:{line}: {text}")


@dataclass
class Directive:
    """One line of a server block or of a directive's block: name, arguments, optional block."""

    name: str
    args: list[str]
    file: str
    line: int
    plugin: str
    block: list[Directive] | None = None

    def error(self, message: str) -> CorefileError:
        """An error located at this directive, naming its plugin."""
        return CorefileError(message, self.file, self.line, self.plugin)

    def options(self) -> list[Directive]:
        """The lines of this directive's block; empty when it has none."""
        return self.block or []

    def arg_error(self) -> CorefileError:
        """The error for a wrong number of arguments, worded as Caddy's ArgErr."""
        last = self.args[-1] if self.args else self.name
        return self.error(f"wrong argument count or unexpected line ending after '{last}'")


@dataclass(frozen=True)
class ZoneAddr:
    """A zone and port a server block serves; port None means the -dns.port default."""

    zone: str
    port: int | None
    transport: str

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.transport}://{self.zone}{port}"


@dataclass
class ServerBlock:
    """A server block: its keys as written, the zones they name, and its directives in order."""

    keys: list[str]
    addrs: list[ZoneAddr]
    directives: list[Directive]
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    file: str
    line: int
    bol: bool  # the first token on its line: a line is a directive
    quoted: bool
    chain: tuple[str, ...]  # files and snippets this token was imported through, outermost first

    def is_(self, word: str) -> bool:
        """Whether this is the bare word ``word``; a quoted "{" is an ordinary argument."""
        return not self.quoted and self.text == word


def _err(tok: _Token, message: str, plugin: str | None = None) -> CorefileError:
    return CorefileError(message, tok.file, tok.line, plugin)


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _lex(text: str, file: str, chain: tuple[str, ...]) -> list[_Token]:
    """Split text into tokens: whitespace separates, '#' comments out the rest of the line."""
    tokens: list[_Token] = []
    n = len(text)
    i, line, bol = (1 if text.startswith("\ufeff") else 0), 1, True
    while i < n:
        ch = text[i]
        if ch == "\n":
            i, line, bol = i + 1, line + 1, True
        elif ch.isspace():
            i += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        else:
            start = line
            if ch == '"':
                word, i, line = _quoted(text, i + 1, line, file)
            else:
                j = i
                while j < n and not text[j].isspace() and text[j] != "#":
                    j += 1
                word, i = text[i:j], j
            tokens.append(_Token(word, file, start, bol, ch == '"', chain))
            bol = False
    return tokens


def _quoted(text: str, i: int, line: int, file: str) -> tuple[str, int, int]:
    """Read a quoted token from just past its opening quote: (token, next index, line)."""
    start = line
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1, line
        if ch == "\\" and i + 1 < len(text):
            ch = text[i + 1]
            out.append(ch if ch == '"' else "\\" + ch)  # only \" is an escape, as in Caddy
            i += 1
        else:
            out.append(ch)
        line += ch == "\n"
        i += 1
    raise CorefileError("unterminated quoted string", file, start)


def _getenv(match: re.Match[str]) -> str:
    try:
        return os.environ.get(match.group(1), "")
    except ValueError:  # a name the OS cannot encode is unset
        return ""


def _expand_env(text: str) -> str:
    """Replace {%VAR%} and {$VAR} with the variable's value, or nothing when it is unset."""
    return _ENV_UNIX.sub(_getenv, _ENV_WINDOWS.sub(_getenv, text))


def _network(text: str) -> Network | None:
    if not _CIDR.fullmatch(text):
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _reverse_zones(net: Network) -> list[str]:
    """The reverse zones covering net, one per octet- (IPv4) or nibble-aligned (IPv6) subnet."""
    step = 8 if net.version == 4 else 4
    aligned = -(-net.prefixlen // step) * step
    drop = (net.max_prefixlen - aligned) // step
    return [
        ".".join(sub.network_address.reverse_pointer.split(".")[drop:]) + "." for sub in net.subnets(new_prefix=aligned)
    ]


def _valid_zone(zone: str) -> bool:
    labels = zone[:-1].split(".")
    return zone == "." or (len(zone) <= 255 and all(0 < len(label) <= 63 for label in labels))


def _zone_addrs(key: str, tok: _Token) -> list[ZoneAddr]:
    """The zones (and port) a server block key names; a CIDR key names its reverse zones."""
    scheme, sep, rest = key.partition("://")
    scheme = scheme.lower() if sep else "dns"
    rest = rest if sep else key
    if scheme not in _TRANSPORTS:
        raise _err(tok, f"unknown transport '{scheme}://' in key '{key}'")
    if scheme != "dns":
        raise _err(tok, f"transport '{scheme}://' is not supported (only dns://): '{key}'")
    host, port = rest, None
    colon = rest.rfind(":")
    if colon >= 0:
        tail = rest[colon + 1 :]
        if _PORT.fullmatch(tail):
            host, port = rest[:colon], int(tail)
            if not 1 <= port <= 65535:
                raise _err(tok, f"invalid port {tail} in key '{key}': must be 1-65535")
        elif _network(rest) is None:  # an IPv6 CIDR has colons of its own
            raise _err(tok, f"invalid port '{tail}' in key '{key}'")
    net = _network(host)
    zones = _reverse_zones(net) if net else [host.lower() if host.endswith(".") else host.lower() + "."]
    for zone in zones:
        if not _valid_zone(zone):
            raise _err(tok, f"zone is not a valid domain name: '{host}'")
    return [ZoneAddr(zone, port, scheme) for zone in zones]


class _Parser:
    """Turns tokens into server blocks, splicing snippets and imported files in as it meets them."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.snippets: dict[str, list[_Token]] = {}
        self.imports = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> list[ServerBlock]:
        blocks: list[ServerBlock] = []
        served: set[ZoneAddr] = set()
        while (tok := self.peek()) is not None:
            if tok.is_("import"):
                self.splice_import(tok)
                continue
            if tok.is_("{"):
                raise _err(tok, "unexpected '{': missing server block keys")
            if tok.is_("}"):
                raise _err(tok, "unexpected '}'")
            keys = self.read_keys()
            if len(keys) == 1 and keys[0][0].startswith("(") and keys[0][0].endswith(")"):
                self.define_snippet(tok, keys[0][0][1:-1])
                continue
            addrs: list[ZoneAddr] = []
            for key, key_tok in keys:
                for addr in _zone_addrs(key, key_tok):
                    if addr in served:
                        raise _err(key_tok, f"cannot serve {addr} - it is already defined")
                    served.add(addr)
                    addrs.append(addr)
            directives = self.read_server_body(tok, braceless=not blocks)
            blocks.append(ServerBlock([k for k, _ in keys], addrs, directives, tok.file, tok.line))
        return blocks

    def read_keys(self) -> list[tuple[str, _Token]]:
        """The keys on this line, and on the next ones while a key ends in a comma."""
        keys: list[tuple[str, _Token]] = []
        more = True
        last = self.tokens[self.pos]
        while (tok := self.peek()) is not None and (more or not tok.bol) and not tok.is_("{"):
            if tok.is_("}"):
                raise _err(tok, "unexpected '}'")
            self.pos += 1
            last, text = tok, _expand_env(tok.text)
            more = text.endswith(",")
            for key in (text[:-1] if more else text).split(","):
                if not key:
                    raise _err(tok, "empty server block key")
                keys.append((key, tok))
        if more:
            raise _err(last, "expected another server block key after ','")
        return keys

    def define_snippet(self, tok: _Token, name: str) -> None:
        """Store the tokens of `(name) { ... }` for later imports."""
        brace = self.peek()
        if brace is None or not brace.is_("{"):
            raise _err(tok, f"snippet ({name}) needs a '{{ ... }}' body")
        if name in self.snippets:
            raise _err(tok, f"snippet '{name}' is already defined")
        self.pos += 1
        start, depth = self.pos, 1
        while (t := self.peek()) is not None:
            self.pos += 1
            depth += t.is_("{") - t.is_("}")
            if depth == 0:
                self.snippets[name] = self.tokens[start : self.pos - 1]
                return
        raise _err(brace, "unclosed '{'")

    def read_server_body(self, first: _Token, braceless: bool) -> list[Directive]:
        """A server block's directives: its `{ ... }`, or the rest of a one-block file."""
        tok = self.peek()
        if tok is None:
            return []
        if tok.is_("{"):
            self.pos += 1
            return self.read_block(tok, None, 0)
        if not braceless:
            raise _err(first, "expected '{' after the server block keys")
        return self.read_block(None, None, 0)

    def read_block(self, opener: _Token | None, plugin: str | None, depth: int) -> list[Directive]:
        """Directives up to the '}' matching opener, or to the end when there is no opener."""
        lines: list[Directive] = []
        while (tok := self.peek()) is not None:
            if tok.is_("}"):
                if opener is None:
                    raise _err(tok, "unexpected '}'", plugin)
                self.pos += 1
                return lines
            if tok.is_("{"):
                raise _err(tok, "unexpected '{': missing directive name", plugin)
            if tok.is_("import"):
                self.splice_import(tok)
                continue
            lines.append(self.read_directive(plugin, depth))
        if opener is not None:
            raise _err(opener, "unclosed '{'", plugin)
        return lines

    def read_directive(self, plugin: str | None, depth: int) -> Directive:
        head = self.tokens[self.pos]
        self.pos += 1
        name = _expand_env(head.text)
        owner = name if plugin is None else plugin
        args: list[str] = []
        while (tok := self.peek()) is not None and not (tok.bol or tok.is_("{") or tok.is_("}")):
            args.append(_expand_env(tok.text))
            self.pos += 1
        block = None
        if tok is not None and not tok.bol and tok.is_("{"):
            if depth >= _MAX_NESTING:
                raise _err(tok, f"blocks nested more than {_MAX_NESTING} deep", owner)
            self.pos += 1
            block = self.read_block(tok, owner, depth + 1)
            after = self.peek()
            if after is not None and not after.bol and not after.is_("}"):
                raise _err(after, f"unexpected '{after.text}' after '}}'", owner)
        return Directive(name, args, head.file, head.line, owner, block)

    def splice_import(self, tok: _Token) -> None:
        """Replace `import X` with the tokens of snippet X, or of the files X names."""
        end = self.pos + 1
        arg = self.tokens[end] if end < len(self.tokens) else None
        if arg is None or arg.bol or arg.is_("{") or arg.is_("}"):
            raise _err(tok, "import needs a snippet name or a file path")
        end += 1
        if end < len(self.tokens) and not (self.tokens[end].bol or self.tokens[end].is_("}")):
            raise _err(tok, "import takes only one argument")
        target = _expand_env(arg.text)
        if not target:
            raise _err(tok, "import needs a non-empty snippet name or file path")
        self.imports += 1
        if self.imports > _MAX_IMPORTS:
            raise _err(tok, f"more than {_MAX_IMPORTS} imports")
        if len(tok.chain) > MAX_IMPORT_DEPTH:
            raise _err(tok, f"imports nested more than {MAX_IMPORT_DEPTH} deep")
        if target in self.snippets:
            imported = _retag(self.snippets[target], tok, f"({target})")
        else:
            imported = _import_files(tok, target)
        self.tokens[self.pos : end] = imported


def _retag(tokens: list[_Token], importer: _Token, source: str) -> list[_Token]:
    """Tokens as imported by importer from source (a file path or "(snippet)")."""
    if source in importer.chain:
        raise _err(importer, "import cycle: " + " -> ".join((*importer.chain, source)))
    chain = (*importer.chain, source)
    out = [replace(t, chain=chain) for t in tokens]
    if out:
        out[0] = replace(out[0], bol=True)  # a snippet body may start on its `{` line
    return out


def _import_files(tok: _Token, target: str) -> list[_Token]:
    """The tokens of the file, or of each file (sorted) a glob matches; relative to tok's file."""
    base = os.path.dirname(tok.file)
    try:
        if any(c in target for c in "*?["):
            paths = sorted(glob.glob(os.path.join(glob.escape(base), target), include_hidden=True))
            if not paths:
                log.warning("No files matching import glob pattern: %s", target)
        else:
            paths = [os.path.join(base, target)]
            if not os.path.exists(paths[0]):
                raise _err(tok, f"import '{target}': no such snippet or file (snippets must be defined before use)")
        tokens: list[_Token] = []
        for path in map(os.path.abspath, paths):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            tokens += _retag(_lex(text, path, ()), tok, path)
    except (OSError, ValueError) as exc:
        raise _err(tok, f"cannot import '{target}': {_reason(exc)}") from exc
    return tokens


def parse(text: str, file: str = "Corefile") -> list[ServerBlock]:
    """Parse Corefile text; file names it in errors and anchors relative imports."""
    return _Parser(_lex(text, file, (os.path.abspath(file),))).parse()


def parse_file(path: str) -> list[ServerBlock]:
    """Read and parse the Corefile at path."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError) as exc:
        raise CorefileError(f"cannot read the Corefile: {_reason(exc)}", path, 0) from exc
    return parse(text, path)


def _tree(d: Directive) -> list[object]:
    return [d.name, d.args, None if d.block is None else [_tree(c) for c in d.block]]


def checksum(blocks: list[ServerBlock]) -> str:
    """Hex SHA-512 of the configuration's content: comments, layout and line numbers do not count."""
    data = [[b.keys, [_tree(d) for d in b.directives]] for b in blocks]
    return hashlib.sha512(json.dumps(data, separators=(",", ":")).encode()).hexdigest()
