"""The console's pure parts: sessions, CSRF tokens and host checks (dagnats/console/security.py),
the server-side DAG drawing (dag_svg.py), and the templates' escaping. No browser, no NATS
(tests/test_console_browser.py drives the whole console in Chromium)."""

from __future__ import annotations

import re
from xml.etree import ElementTree

from hypothesis import given
from hypothesis import strategies as st

from dagnats.console import dag_svg, reads, security
from dagnats.console.common import ENVIRONMENT
from dagnats.console.security import Keys

TOKEN = "a-console-token-of-enough-length-123"


def test_a_session_names_its_actor_until_it_expires() -> None:
    keys = Keys.make(TOKEN)
    cookie = security.make_session(keys, "ada <admin>", now_s=1_000)
    assert security.read_session(keys, cookie, now_s=1_000) == "ada <admin>"
    assert security.read_session(keys, cookie, now_s=1_000 + security.session_s_max) is not None
    assert security.read_session(keys, cookie, now_s=1_001 + security.session_s_max) is None


def test_a_session_signed_with_another_token_or_edited_is_refused() -> None:
    keys = Keys.make(TOKEN)
    cookie = security.make_session(keys, "ada", now_s=1_000)
    other = Keys.make(TOKEN + "x")
    assert security.read_session(other, cookie, now_s=1_000) is None
    expires, actor, signature = cookie.split(".")
    longer = f"{int(expires) + 10_000}.{actor}.{signature}"
    assert security.read_session(keys, longer, now_s=1_000) is None
    assert security.read_session(keys, "", now_s=1_000) is None
    assert security.read_session(keys, "x.y.z", now_s=1_000) is None


def test_without_a_token_everyone_on_loopback_is_the_local_user() -> None:
    keys = Keys.make(None)
    actor = security.authenticated_actor(keys, session=None, authorization="", now_s=0)
    assert actor == security.LOCAL_ACTOR
    with_token = Keys.make(TOKEN)
    assert security.authenticated_actor(with_token, session=None, authorization="", now_s=0) is None
    bearer = security.authenticated_actor(
        with_token, session="junk", authorization=f"Bearer {TOKEN}", now_s=0
    )
    assert bearer == "API token holder"
    assert not security.token_matches(with_token, TOKEN[:-1])
    assert security.token_matches(with_token, f" {TOKEN} ")


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_a_csrf_token_fits_its_own_cookie_only(cookie: str, other: str) -> None:
    keys = Keys.make(None)
    token = security.csrf_token(keys, cookie)
    assert security.csrf_ok(keys, cookie, token)
    assert security.csrf_ok(keys, other, token) == (other == cookie)
    assert not security.csrf_ok(keys, cookie, None)
    assert not security.csrf_ok(keys, None, token)
    assert not security.csrf_ok(Keys.make(None), cookie, token)  # another process's key


def test_since_reads_durations_days_and_dates() -> None:
    now = 10 * 86_400_000
    assert reads.since_ms("2h", now) == now - 7_200_000
    assert reads.since_ms("7d", now) == now - 7 * 86_400_000
    assert reads.since_ms("1970-01-02", now) == 86_400_000
    assert reads.since_ms("yesterday", now) is None


def test_hosts_and_origins() -> None:
    for host in ("127.0.0.1:8080", "localhost:1", "[::1]:80", "127.0.0.2", "localhost"):
        assert security.host_is_loopback(host), host
    for bad in ("evil.example", "10.0.0.1:80", "", None, "[2001:db8::1]:80"):
        assert not security.host_is_loopback(bad), bad
    assert security.same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not security.same_origin("http://evil.example", "127.0.0.1:8080")
    assert security.same_origin(None, "127.0.0.1:8080")


def test_actor_names_are_printable_and_bounded() -> None:
    assert security.clean_actor("  ada\x00\n ") == "ada"
    assert len(security.clean_actor("x" * 500)) == security.actor_chars_max


def test_layers_follow_the_longest_path() -> None:
    nodes = [
        dag_svg.Node("a", ()),
        dag_svg.Node("b", ("a",)),
        dag_svg.Node("c", ("a", "b")),
        dag_svg.Node("d", ("missing",)),
    ]
    assert dag_svg.layers(nodes) == {"a": 0, "b": 1, "c": 2, "d": 0}
    reversed_order = list(reversed(nodes))
    assert dag_svg.layers(reversed_order) == {"a": 0, "b": 1, "c": 2, "d": 0}


PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs"))  # what XML can hold at all


@given(st.lists(st.text(PRINTABLE, min_size=1, max_size=30), min_size=1, max_size=12, unique=True))
def test_the_drawing_is_valid_svg_with_every_step_escaped_and_labelled(names: list[str]) -> None:
    nodes = [
        dag_svg.Node(name, tuple(names[:index][-2:]), status="failed" if index % 2 else "running")
        for index, name in enumerate(names)
    ]
    svg = dag_svg.render(nodes, title="<t>")
    root = ElementTree.fromstring(svg)  # raises on anything unescaped
    groups = root.findall("{http://www.w3.org/2000/svg}g")
    assert [g.get("data-step") for g in groups] == names
    for group in groups:
        texts = [t.text or "" for t in group.findall("{http://www.w3.org/2000/svg}text")]
        assert re.search("failed|running", texts[1]), texts  # the status as a word
    edges = root.findall("{http://www.w3.org/2000/svg}path")
    assert len(edges) == sum(len(node.depends_on) for node in nodes)


def test_templates_escape_user_data() -> None:
    html = ENVIRONMENT.get_template("missing.html").render(
        message="<script>alert(1)</script>", title="<b>t</b>", csrf="", actor="<i>a</i>",
        token_mode=False, notice="<img src=x>", error="", now_ms=0,
    )  # fmt: skip
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "<img src=x>" not in html and "<b>t</b>" not in html and "<i>a</i>" not in html
