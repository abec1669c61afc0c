"""Tests for the Corefile parser: syntax, keys, env, snippets, imports, errors and the checksum."""

from __future__ import annotations

import logging
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterdns.corefile import (
    CorefileError,
    Directive,
    ServerBlock,
    ZoneAddr,
    checksum,
    parse,
    parse_file,
)

SEED = """\
.:53 {
    errors
    health
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      upstream
      fallthrough in-addr.arpa ip6.arpa
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}
"""

KUBEADM = """\
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
"""


def shape(directives: list[Directive]) -> list[object]:
    """Directives as nested (name, args, block) tuples, for compact comparisons."""
    return [(d.name, d.args, None if d.block is None else shape(d.block)) for d in directives]


def one(text: str) -> ServerBlock:
    blocks = parse(text)
    assert len(blocks) == 1
    return blocks[0]


def error_of(text: str, file: str = "Corefile") -> CorefileError:
    with pytest.raises(CorefileError) as info:
        parse(text, file)
    return info.value


# --- the Corefiles clusters ship -------------------------------------------------------------


def test_seed_corefile() -> None:
    block = one(SEED)
    assert block.keys == [".:53"]
    assert block.addrs == [ZoneAddr(".", 53, "dns")]
    assert (block.file, block.line) == ("Corefile", 1)
    names = [d.name for d in block.directives]
    assert names == [
        "errors",
        "health",
        "kubernetes",
        "prometheus",
        "forward",
        "cache",
        "loop",
        "reload",
        "loadbalance",
    ]
    k8s = block.directives[2]
    assert k8s.args == ["cluster.local", "in-addr.arpa", "ip6.arpa"]
    assert (k8s.file, k8s.line, k8s.plugin) == ("Corefile", 4, "kubernetes")
    assert shape(k8s.options()) == [
        ("pods", ["insecure"], None),
        ("upstream", [], None),
        ("fallthrough", ["in-addr.arpa", "ip6.arpa"], None),
    ]
    assert [(o.line, o.plugin) for o in k8s.options()] == [(5, "kubernetes"), (6, "kubernetes"), (7, "kubernetes")]
    assert block.directives[3].args == [":9153"]
    assert block.directives[4].args == [".", "/etc/resolv.conf"]
    assert block.directives[0].block is None and block.directives[0].options() == []


def test_kubeadm_corefile() -> None:
    d = {x.name: x for x in one(KUBEADM).directives}
    assert shape([d["health"]]) == [("health", [], [("lameduck", ["5s"], None)])]
    assert shape([d["ready"]]) == [("ready", [], None)]
    assert shape([d["forward"]]) == [("forward", [".", "/etc/resolv.conf"], [("max_concurrent", ["1000"], None)])]
    assert shape(d["cache"].options()) == [
        ("disable", ["success", "cluster.local"], None),
        ("disable", ["denial", "cluster.local"], None),
    ]
    assert d["health"].options()[0].plugin == "health"


# --- blocks, keys and ports --------------------------------------------------------------------


def test_several_blocks_keep_order() -> None:
    text = ".:53 {\n  forward . 1.1.1.1\n}\n\nexample.org:1053 example.net {\n  whoami\n}\n"
    blocks = parse(text)
    assert [b.keys for b in blocks] == [[".:53"], ["example.org:1053", "example.net"]]
    assert [b.line for b in blocks] == [1, 5]
    assert blocks[1].addrs == [ZoneAddr("example.org.", 1053, "dns"), ZoneAddr("example.net.", None, "dns")]
    assert blocks[1].directives[0].line == 6


@pytest.mark.parametrize(
    ("key", "addrs"),
    [
        (".", [(".", None)]),
        (".:53", [(".", 53)]),
        (":53", [(".", 53)]),
        ("dns://.:53", [(".", 53)]),
        ("DNS://Example.ORG", [("example.org.", None)]),
        ("cluster.local:1053", [("cluster.local.", 1053)]),
        ("cluster.local.", [("cluster.local.", None)]),
        ("a.org,b.org:54", [("a.org.", None), ("b.org.", 54)]),
        ("10.0.0.0/24", [("0.0.10.in-addr.arpa.", None)]),
        ("10.0.0.0/24:1053", [("0.0.10.in-addr.arpa.", 1053)]),
        ("10.0.0.9/8", [("10.in-addr.arpa.", None)]),
        ("10.1.2.3/32", [("3.2.1.10.in-addr.arpa.", None)]),
        ("0.0.0.0/0", [("in-addr.arpa.", None)]),
        ("10.0.0.0/15", [("0.10.in-addr.arpa.", None), ("1.10.in-addr.arpa.", None)]),
        ("10.96.0.0/12", [(f"{i}.10.in-addr.arpa.", None) for i in range(96, 112)]),
        ("fd00::/8", [("d.f.ip6.arpa.", None)]),
        ("fd00::/7", [("c.f.ip6.arpa.", None), ("d.f.ip6.arpa.", None)]),
        ("fd00::/8:53", [("d.f.ip6.arpa.", 53)]),
        ("2001:db8::/32", [("8.b.d.0.1.0.0.2.ip6.arpa.", None)]),
        ("10.0.0.0/33", [("10.0.0.0/33.", None)]),  # not a CIDR, so a (strange) name, as in CoreDNS
    ],
)
def test_keys(key: str, addrs: list[tuple[str, int | None]]) -> None:
    block = one(f"{key} {{\n}}\n")
    assert block.addrs == [ZoneAddr(zone, port, "dns") for zone, port in addrs]


def test_cidr_off_a_boundary_expands_to_every_covered_zone() -> None:
    zones = [a.zone for a in one("10.0.0.0/17 {\n}").addrs]
    assert len(zones) == 128
    assert zones[0] == "0.0.10.in-addr.arpa." and zones[-1] == "127.0.10.in-addr.arpa."


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("a.org b.org {\n}", ["a.org", "b.org"]),
        ("a.org, b.org {\n}", ["a.org", "b.org"]),
        ("a.org,\n  b.org\n{\n}", ["a.org", "b.org"]),  # a trailing comma continues the keys
        ("a.org\n{\n  whoami\n}", ["a.org"]),  # the brace may open on the next line
        ("a.org", ["a.org"]),  # keys alone
    ],
)
def test_key_layouts(text: str, keys: list[str]) -> None:
    assert one(text).keys == keys


def test_single_block_may_omit_braces() -> None:
    block = one(".:1053\nwhoami\nforward . 8.8.8.8 {\n  max_fails 2\n}\n")
    assert shape(block.directives) == [
        ("whoami", [], None),
        ("forward", [".", "8.8.8.8"], [("max_fails", ["2"], None)]),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (".:53 { whoami }", [("whoami", [], None)]),
        ("a {\n  health { lameduck 5s }\n}", [("health", [], [("lameduck", ["5s"], None)])]),
        ("a {\n  x {\n    y {\n      z 1\n    }\n  }\n}", [("x", [], [("y", [], [("z", ["1"], None)])])]),
        ("a {\n  x {\n  }\n}", [("x", [], [])]),
        ("a {\n  x { } }", [("x", [], [])]),
        (
            'a {\n  template IN A {\n    answer "{{ .Name }} 60 IN A 1.2.3.4"\n  }\n}',
            [("template", ["IN", "A"], [("answer", ["{{ .Name }} 60 IN A 1.2.3.4"], None)])],
        ),
    ],
)
def test_blocks(text: str, expected: list[object]) -> None:
    assert shape(one(text).directives) == expected


# --- lexing: quotes, comments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "args"),
    [
        ('x "a b" c', ["a b", "c"]),
        ('x "say \\"hi\\""', ['say "hi"']),
        ('x "back\\slash"', ["back\\slash"]),
        ('x ""', [""]),
        ('x "#not a comment"', ["#not a comment"]),
        ('x "{"', ["{"]),  # a quoted brace is an argument
        ('x "}"', ["}"]),
        ("x a # comment { }", ["a"]),
        ("x a#b", ["a"]),
        ('x mid"quote"', ['mid"quote"']),
        ('x "two\nlines" y', ["two\nlines", "y"]),
        ("x\ta\r", ["a"]),
    ],
)
def test_quotes_and_comments(line: str, args: list[str]) -> None:
    (d,) = one(f"a {{\n  {line}\n}}").directives
    assert (d.name, d.args) == ("x", args)


def test_comments_and_blank_lines_are_ignored() -> None:
    text = "\ufeff# header\n\n.:53 { # open\n  # only a comment\n  errors   # trailing\n\n}  # end\n# tail"
    block = one(text)
    assert shape(block.directives) == [("errors", [], None)]
    assert (block.line, block.directives[0].line) == (3, 5)


def test_line_after_multiline_quote_counts_lines() -> None:
    (x, y) = one('a {\n  x "1\n2\n3"\n  y\n}').directives
    assert (x.line, y.line) == (2, 5)


# --- environment -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("{$ZONE}", "cluster.local"),
        ("{%ZONE%}", "cluster.local"),
        ("pre-{$ZONE}-{%PORT%}", "pre-cluster.local-1053"),
        ("{$UNSET_CLUSTERDNS_VAR}", ""),
        ('"{$SPACED}"', "a b"),
        ("{$SPACED}", "a b"),  # substitution happens after splitting: still one argument
        ("{$}", "{$}"),
        ("{$\ud800}", ""),
    ],
)
def test_env_substitution(monkeypatch: pytest.MonkeyPatch, arg: str, value: str) -> None:
    monkeypatch.setenv("ZONE", "cluster.local")
    monkeypatch.setenv("PORT", "1053")
    monkeypatch.setenv("SPACED", "a b")
    (d,) = one(f"a {{\n  x {arg}\n}}").directives
    assert d.args == [value]


def test_env_in_keys_and_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZONE", "Cluster.Local")
    monkeypatch.setenv("PORT", "1053")
    monkeypatch.setenv("PLUGIN", "whoami")
    block = one("{$ZONE}:{$PORT} {\n  {$PLUGIN}\n}")
    assert block.keys == ["Cluster.Local:1053"]
    assert block.addrs == [ZoneAddr("cluster.local.", 1053, "dns")]
    assert block.directives[0].name == "whoami"


# --- snippets ----------------------------------------------------------------------------------


def test_snippets() -> None:
    text = """\
(common) {
    errors
    cache 30
}
(k8sopts) { pods insecure }
(server) {
    example.org {
        whoami
    }
}
.:53 {
    import common
    kubernetes cluster.local {
        import k8sopts
        ttl 5
    }
}
import server
"""
    blocks = parse(text)
    assert [b.keys for b in blocks] == [[".:53"], ["example.org"]]
    assert shape(blocks[0].directives) == [
        ("errors", [], None),
        ("cache", ["30"], None),
        ("kubernetes", ["cluster.local"], [("pods", ["insecure"], None), ("ttl", ["5"], None)]),
    ]
    # spliced directives keep the file:line where the snippet wrote them
    assert [d.line for d in blocks[0].directives] == [2, 3, 13]
    assert [(o.line, o.plugin) for o in blocks[0].directives[2].options()] == [(5, "kubernetes"), (15, "kubernetes")]
    assert blocks[1].line == 7


def test_snippet_imported_twice_and_nested() -> None:
    text = "(a) {\n  log\n}\n(b) {\n  import a\n  errors\n}\nx {\n  import b\n  import a\n}"
    assert shape(one(text).directives) == [("log", [], None), ("errors", [], None), ("log", [], None)]


# --- file imports ------------------------------------------------------------------------------


def test_file_imports(tmp_path: Path) -> None:
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "b.server").write_text("b.org:1053 {\n  whoami\n}\n")
    (tmp_path / "custom" / "a.server").write_text("# stub domain\na.org {\n  forward . 10.0.0.1\n}\n")
    (tmp_path / "custom" / "ignored.txt").write_text("not { imported")
    (tmp_path / "extra.conf").write_text("import sub/more.conf\nlog\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.conf").write_text("\n\nerrors\n")
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:53 {\n  import extra.conf\n  cache 30\n}\nimport custom/*.server\n")
    blocks = parse_file(str(corefile))
    assert [b.keys for b in blocks] == [[".:53"], ["a.org"], ["b.org:1053"]]  # glob matches sorted
    assert [(d.name, Path(d.file).name, d.line) for d in blocks[0].directives] == [
        ("errors", "more.conf", 3),  # relative to the importing file's directory
        ("log", "extra.conf", 2),
        ("cache", "Corefile", 3),
    ]
    assert (Path(blocks[1].file).name, blocks[1].line) == ("a.server", 2)
    assert blocks[1].directives[0].file == str(tmp_path / "custom" / "a.server")


def test_empty_glob_is_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "custom").mkdir()
    text = ".:53 {\n  import custom/*.override\n  errors\n}\nimport custom/*.server\n"
    with caplog.at_level(logging.WARNING, logger="clusterdns.corefile"):
        blocks = parse(text, str(tmp_path / "Corefile"))
    assert shape(blocks[0].directives) == [("errors", [], None)]
    assert "No files matching import glob pattern: custom/*.server" in caplog.text


def test_absolute_import(tmp_path: Path) -> None:
    (tmp_path / "opts").write_text("pods verified\n")
    block = one(f"a {{\n  kubernetes {{\n    import {tmp_path / 'opts'}\n  }}\n}}")
    assert shape(block.directives) == [("kubernetes", [], [("pods", ["verified"], None)])]


@pytest.mark.parametrize(
    ("files", "main", "where", "message"),
    [
        ({"a": "import b\n", "b": "import a\n"}, "import a\n", ("b", 1), "import cycle"),
        ({}, "import Corefile\n", ("Corefile", 1), "import cycle"),
        ({"bad": 'x {\n  y "open\n}\n'}, "import bad\n", ("bad", 2), "unterminated quoted string"),
        ({"bad": "x {\n}\n}\n"}, ".:53 {\n}\nimport bad\n", ("bad", 3), "unexpected '}'"),
        ({}, "x {\n  import nothere.conf\n}\n", ("Corefile", 2), "import 'nothere.conf': no such snippet or file"),
        ({"dir/f": "x"}, "import dir\n", ("Corefile", 1), "cannot import 'dir'"),
        ({"bin": b"\xff\xfe"}, "import bin\n", ("Corefile", 1), "cannot import 'bin'"),
    ],
)
def test_import_errors(
    tmp_path: Path, files: dict[str, str | bytes], main: str, where: tuple[str, int], message: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            (tmp_path / name).write_text(content)
    (tmp_path / "Corefile").write_text(main)
    with pytest.raises(CorefileError) as info:
        parse_file(str(tmp_path / "Corefile"))
    err = info.value
    assert (Path(err.file).name, err.line) == where
    assert message in err.message


def test_import_depth_limit(tmp_path: Path) -> None:
    for i in range(105):
        (tmp_path / f"f{i}").write_text(f"import f{i + 1}\n")
    (tmp_path / "f105").write_text("x {\n}\n")
    err = error_of("import f0\n", str(tmp_path / "Corefile"))
    assert "imports nested more than 100 deep" in err.message


def test_parse_file_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "nope" / "Corefile")
    with pytest.raises(CorefileError) as info:
        parse_file(path)
    assert (info.value.file, info.value.line) == (path, 0)
    assert str(info.value).startswith(f"{path}:0: cannot read the Corefile: ")


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "plugin", "message"),
    [
        ("}\n", 1, None, "unexpected '}'"),
        (".:53 {\n}\n}\n", 3, None, "unexpected '}'"),
        (".:53 }\n", 1, None, "unexpected '}'"),
        (".:53 {\n  errors\n", 1, None, "unclosed '{'"),
        (".:53 {\n  kubernetes {\n    pods insecure\n}\n", 1, None, "unclosed '{'"),
        (".:53 {\n  kubernetes {\n    pods insecure\n", 2, "kubernetes", "unclosed '{'"),
        ("x {\n  a {\n    b {\n      c\n  }\n}\n", 1, None, "unclosed '{'"),
        ("{\n}\n", 1, None, "unexpected '{': missing server block keys"),
        (".:53 {\n  {\n  }\n}\n", 2, None, "unexpected '{': missing directive name"),
        (".:53 {\n  kubernetes\n  {\n  }\n}\n", 3, None, "unexpected '{': missing directive name"),
        (".:53 {\n  health {\n    {\n  }\n}\n", 3, "health", "unexpected '{': missing directive name"),
        (".:53 {\n  health { } x\n}\n", 2, "health", "unexpected 'x' after '}'"),
        ('"" {\n}\n', 1, None, "empty server block key"),
        ("a,,b {\n}\n", 1, None, "empty server block key"),
        ("a.org, {\n}\n", 1, None, "expected another server block key after ','"),
        ("a.org:0 {\n}\n", 1, None, "invalid port 0 in key 'a.org:0': must be 1-65535"),
        ("a.org:65536 {\n}\n", 1, None, "invalid port 65536"),
        ("a.org:-1 {\n}\n", 1, None, "invalid port -1"),
        ("a.org:dns {\n}\n", 1, None, "invalid port 'dns' in key 'a.org:dns'"),
        ("a.org: {\n}\n", 1, None, "invalid port ''"),
        ("tls://.:853 {\n}\n", 1, None, "transport 'tls://' is not supported"),
        ("https://. {\n}\n", 1, None, "transport 'https://' is not supported"),
        ("grpc://. {\n}\n", 1, None, "transport 'grpc://' is not supported"),
        ("quic://. {\n}\n", 1, None, "transport 'quic://' is not supported"),
        ("udp://. {\n}\n", 1, None, "unknown transport 'udp://'"),
        ("a..b {\n}\n", 1, None, "zone is not a valid domain name: 'a..b'"),
        (f"{'x' * 64}.org {{\n}}\n", 1, None, "zone is not a valid domain name"),
        (
            "example.org:53 {\n}\n\ndns://Example.org.:53 {\n}\n",
            4,
            None,
            "cannot serve dns://example.org.:53 - it is already defined",
        ),
        ("a.org b.org a.org {\n}\n", 1, None, "cannot serve dns://a.org. - it is already defined"),
        ("10.0.0.0/24 {\n}\n0.0.10.in-addr.arpa {\n}\n", 3, None, "cannot serve dns://0.0.10.in-addr.arpa."),
        (".:53 {\n}\nexample.org\n  whoami\n", 3, None, "expected '{' after the server block keys"),
        ("import\n", 1, None, "import needs a snippet name or a file path"),
        (".:53 {\n  import\n}\n", 2, None, "import needs a snippet name or a file path"),
        (".:53 {\n  import a b\n}\n", 2, None, "import takes only one argument"),
        ('.:53 {\n  import ""\n}\n', 2, None, "import needs a non-empty snippet name or file path"),
        (".:53 {\n  import later\n}\n(later) {\n  log\n}\n", 2, None, "no such snippet or file"),
        ("(s) {\n  log\n}\n(s) {\n  errors\n}\n", 4, None, "snippet 's' is already defined"),
        ("(s)\n", 1, None, "snippet (s) needs a '{ ... }' body"),
        ("(s) {\n  log\n", 1, None, "unclosed '{'"),
        ("(s) {\n  import s\n}\nx {\n  import s\n}\n", 2, None, "import cycle"),
        ('.:53 {\n  x "abc\n}\n', 2, None, "unterminated quoted string"),
    ],
)
def test_errors(text: str, line: int, plugin: str | None, message: str) -> None:
    err = error_of(text)
    assert (err.file, err.line, err.plugin) == ("Corefile", line, plugin)
    assert message in err.message
    prefix = f"Corefile:{line}: " if plugin is None else f"Corefile:{line}: {plugin}: "
    assert str(err) == prefix + err.message


def test_nesting_limit() -> None:
    text = "a {\n" + "".join(f"{' ' * i}x{i} {{\n" for i in range(120)) + "}\n" * 121
    assert "blocks nested more than 100 deep" in error_of(text).message


def test_directive_errors() -> None:
    (forward,) = one("a {\n  forward . 1.1.1.1 {\n    max_fails\n  }\n}").directives
    (opt,) = forward.options()
    assert str(forward.error("bad upstream")) == "Corefile:2: forward: bad upstream"
    assert str(forward.arg_error()) == (
        "Corefile:2: forward: wrong argument count or unexpected line ending after '1.1.1.1'"
    )
    assert (
        str(opt.arg_error()) == "Corefile:3: forward: wrong argument count or unexpected line ending after 'max_fails'"
    )


def test_error_attributes() -> None:
    err = CorefileError("boom", "f", 7)
    assert (err.message, err.file, err.line, err.plugin, str(err)) == ("boom", "f", 7, None, "f:7: boom")
    assert str(CorefileError("boom", "f", 7, "cache")) == "f:7: cache: boom"


# --- checksum ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edited", "same"),
    [
        (SEED.replace("    cache 30\n", "    # keep answers for 30s\n    cache 30   # seconds\n\n"), True),
        (SEED.replace("    ", "\t"), True),
        (SEED.replace("pods insecure", '"pods" "insecure"'), True),
        ("# generated\n" + SEED, True),
        (SEED.replace("cache 30", "cache 60"), False),
        (SEED.replace("    loop\n", ""), False),
        (SEED.replace("    health\n", "    health {\n    }\n"), False),
        (SEED.replace(".:53", ".:1053"), False),
        (SEED.replace("    reload\n    loadbalance\n", "    loadbalance\n    reload\n"), False),
    ],
)
def test_checksum(edited: str, same: bool) -> None:
    original = checksum(parse(SEED))
    assert len(original) == 128 and int(original, 16) >= 0
    assert (checksum(parse(edited)) == original) is same


# --- robustness --------------------------------------------------------------------------------

WORDS = [
    "{",
    "}",
    "{\n",
    "}\n",
    "\n",
    " ",
    "\t",
    "#",
    '"',
    '\\"',
    ",",
    "import",
    "import ",
    "snip",
    "(snip)",
    ".:53",
    "a.org:99999",
    "a.org:",
    "tls://.",
    "10.0.0.0/9",
    "fd00::/7",
    "errors",
    "x",
    "{$HOME}",
    "{%PATH%}",
    "nothere*.conf",
    "missing.conf",
    ":",
    "::",
    "..",
    "\ufeff",
    "\r\n",
]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(WORDS), max_size=40).map("".join)))
def test_random_text_raises_only_corefile_errors(text: str) -> None:
    try:
        blocks = parse(text, "/nonexistent-clusterdns-dir/Corefile")
    except CorefileError as err:
        assert str(err).startswith(f"{err.file}:{err.line}: ")
    else:
        checksum(blocks)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=20).filter(
    lambda n: n != "import"))  # `import` is the parser's own keyword, not a directive
def test_generated_names_round_trip(name: str) -> None:
    (d,) = one(f"a {{\n  {name} arg\n}}").directives
    assert (d.name, d.args, d.plugin) == (name, ["arg"], name)
