"""Names in the Status Server's requests: trailing slashes, `.`/`..`, empty components, %2F.

CFHT's rules (spec status-server.md): names are UNIX-style paths resolved as UNIX does, requests are
URL-encoded single lines, a path component never contains `/`, TOUCH makes objects and TOUCHDIR
directories. What follows from them, for every request kind that takes a name:
- a name ending in `/` (or in a `.`/`..` component) names a directory: where it names an object the
  request fails NOTDIR (UNIX: `file/` is ENOTDIR); TOUCH of it fails ISDIR and creates nothing;
- `.` and `..` are resolved lexically, as the shell's `cd` does; `..` at the root stays there;
- empty components (`//`) count for nothing, as in UNIX;
- `%2F` in a name is refused (SYNTAX): it cannot be data inside a component, and taking it as a
  separator would make an encoded request mean something else than it says; in a value it is a `/`.
"""

from __future__ import annotations

import pytest

from DriveStateMonitor.statserv_protocol import StatServSession
from DriveStateMonitor.statserv_tree import Tree, names_directory


class Session:
    def __init__(self, tree: Tree) -> None:
        self.session = StatServSession(tree, lambda: 1000.0, is_local=True)

    def ask(self, line: str) -> str:
        self.session.receive_data(line.encode("ascii") + b"\n")
        return self.session.data_to_send().decode("utf-8")


@pytest.fixture
def tree() -> Tree:
    """/a/d (an empty directory), /a/e (another) and /a/x (an object holding "v")."""
    tree = Tree()
    tree.touch_dir("/a/d", 0.0)
    tree.touch_dir("/a/e", 0.0)
    tree.touch("/a/x", 0.0)
    tree.put("/a/x", "v", 0.0)
    return tree


@pytest.fixture
def client(tree) -> Session:
    return Session(tree)


def code_of(response: str) -> str:
    """`!` responses give their code, success gives `.`."""
    last = response.splitlines()[-1]
    return last.split()[1] if last.startswith("!") else "."


def listing(tree: Tree, path: str = "/a"):
    return [name for name, _ in tree.list_dir(path)]


# -- trailing slashes, every request kind ---------------------------------------------------------

@pytest.mark.parametrize("request_line, code", [
    ("TOUCH /a/x/", "NOTDIR"),
    ("TOUCHDIR /a/x/", "NOTDIR"),
    ("PUT /a/x/ w", "NOTDIR"),
    ("GET /a/x/", "NOTDIR"),
    ("STAT /a/x/", "NOTDIR"),
    ("LS /a/x/", "NOTDIR"),
    ("CD /a/x/", "NOTDIR"),
    ("MONITOR /a/x/", "NOTDIR"),
    ("UNMONITOR /a/x/", "NOTDIR"),
    ("REMOVE /a/x/", "NOTDIR"),
    ("RMDIR /a/x/", "NOTDIR"),
])
def test_a_trailing_slash_on_an_object_is_notdir_for_every_request(tree, client, request_line, code):
    assert code_of(client.ask(request_line)) == code
    assert tree.get("/a/x", 1000.0) == "v"          # untouched, not removed
    assert tree.kind("/a/x") == "object"


@pytest.mark.parametrize("name", ["/a/d/", "/a/new/", "/a/d/.", "/a/new/.", "/a/x/.."])
def test_touch_of_a_directory_name_is_isdir_and_creates_nothing(tree, client, name):
    assert code_of(client.ask("TOUCH " + name)) == "ISDIR"
    assert listing(tree) == ["d", "e", "x"]
    assert tree.kind("/a/d") == "directory" and tree.list_dir("/a/d") == []


@pytest.mark.parametrize("request_line, code", [
    ("PUT /a/d/ w", "ISDIR"),
    ("GET /a/d/", "ISDIR"),
    ("REMOVE /a/d/", "ISDIR"),
    ("PUT /a/none/ w", "NONEXISTENT"),
    ("GET /a/none/", "NONEXISTENT"),
    ("REMOVE /a/none/", "NONEXISTENT"),
    ("STAT /a/none/", "NONEXISTENT"),
])
def test_object_requests_on_a_directory_name_fail_as_without_the_slash(client, request_line, code):
    assert code_of(client.ask(request_line)) == code
    assert code_of(client.ask(request_line.replace("/ ", " ").rstrip("/"))) == code


def test_directory_requests_accept_a_trailing_slash(tree, client):
    assert code_of(client.ask("TOUCHDIR /a/new/ COMMENT=made")) == "."
    assert tree.kind("/a/new") == "directory" and tree.stat("/a/new")["comment"] == "made"
    assert "* name=/a/d" in client.ask("STAT /a/d/")
    assert client.ask("LS /a/") == "* d/\n* e/\n* new/\n* x = \"v\"\n.\n"
    assert client.ask("MONITOR /a/d/") == ".\n"      # an empty directory's listing
    assert code_of(client.ask("UNMONITOR /a/d/")) == "."
    assert code_of(client.ask("RMDIR /a/e/")) == "." and tree.kind("/a/e") is None
    assert code_of(client.ask("CD /a/d/")) == "." and client.ask("PWD") == ". /a/d\n"


# -- dots and empty components --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/a/./x", "/a/d/../x", "/../a/x", "/a//x", "//a///x", "/./a/e/../x"])
def test_dots_and_empty_components_resolve_like_unix(client, name):
    assert client.ask("GET " + name) == '. "v"\n'


def test_relative_names_and_dots_resolve_against_the_current_path(tree, client):
    assert code_of(client.ask("CD /a/d")) == "."
    assert client.ask("GET ../x") == '. "v"\n'
    assert code_of(client.ask("TOUCH ./y")) == "." and tree.kind("/a/d/y") == "object"
    assert code_of(client.ask("PUT ../d//y w")) == "." and tree.get("/a/d/y", 0.0) == "w"
    assert code_of(client.ask("CD ../..")) == "." and client.ask("PWD") == ". /\n"
    assert code_of(client.ask("CD ..")) == "." and client.ask("PWD") == ". /\n"  # root's .. is root
    assert code_of(client.ask("TOUCHDIR a//f/./g")) == "." and tree.kind("/a/f/g") == "directory"


def test_dot_dot_is_lexical_even_past_an_object(client):
    # The shell's `cd` way (POSIX `cd -L`): /a/x/.. is /a, a directory, whatever x is.
    assert "* name=/a" in client.ask("STAT /a/x/..")


def test_names_directory():
    assert names_directory("/a/") and names_directory(".") and names_directory("..")
    assert names_directory("/a/.") and names_directory("a/..")
    assert not names_directory("/a") and not names_directory("/a/.hidden")
    assert not names_directory("/a/..x")


# -- encoded separators ---------------------------------------------------------------------------

@pytest.mark.parametrize("request_line", [
    "TOUCH /a/b%2Fc", "TOUCH NAME=/a/b%2fc", "TOUCHDIR /a/b%2Fc", "PUT /a/x%2F w", "GET /a%2Fx",
    "STAT /a%2Fx", "LS /a%2Fd", "CD /a%2Fd", "MONITOR /a%2Fx", "UNMONITOR /a%2Fx", "REMOVE /a%2Fx",
    "RMDIR /a%2Fe", "GET %2Fa/x",
])
def test_encoded_slash_in_a_name_is_refused_for_every_request(tree, client, request_line):
    assert code_of(client.ask(request_line)) == "SYNTAX"
    assert listing(tree) == ["d", "e", "x"]
    assert tree.kind("/a/b") is None and tree.monitored_paths(client.session) == []


def test_encoded_slash_in_a_value_and_other_escapes_in_a_name_decode(tree, client):
    assert code_of(client.ask("PUT /a/x a%2Fb")) == "." and tree.get("/a/x", 0.0) == "a/b"
    assert client.ask("GET /a/%78") == '. "a/b"\n'              # %78 is x
    assert client.ask("GET /a/%2E/x") == '. "a/b"\n'            # %2E is a dot: the same name
    assert code_of(client.ask("TOUCH /a/100%25")) == "." and tree.kind("/a/100%") == "object"
