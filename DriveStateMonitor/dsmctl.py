#!/usr/bin/env python3
"""dsmctl: read, write and watch the DSM's Status Server tree from the command line.

    dsmctl.py get NAME                      the value (printed raw; UNDEFINED/EXPIRED as the word)
    dsmctl.py put NAME VALUE [--lifetime S] [--create [--type T] [--comment C]]
    dsmctl.py ls [PATH]                     a directory's entries
    dsmctl.py tree [PATH]                   everything under PATH, indented
    dsmctl.py stat NAME                     every attribute
    dsmctl.py watch NAME... [--count N] [--timeout S]
                                            print "time path = value" for each change, live
    dsmctl.py rm NAME / rmdir PATH          remove an object / an empty directory

--server host:port or a Unix socket path (default $STATSERV, else localhost:3111); --json prints
get, ls, tree and stat as JSON.

Exit codes:
    0  success
    1  keyboard interrupt (Ctrl-C)
    2  cannot connect to the server (also a command-line usage error, as argparse does)
    3  the connection broke during the request (or the server did not answer in time)
    5  the server refused the request: its code and text are printed to standard error
    6  get: the value is not valid (UNDEFINED or EXPIRED, printed as the word)
"""
import os
import sys

if __name__ == "__main__" and not __package__:
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(_here)
    __package__ = os.path.basename(_here)
    __import__(__package__)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402

from .statserv_client import (DEFAULT_ADDRESS, DIRECTORY, ENVIRONMENT_VARIABLE, ErrorCode,  # noqa: E402
                              StatServClient, is_valid, parse_address)
from .statserv_tree import escape_text, quote_string  # noqa: E402

EXIT_OK = 0
EXIT_INTERRUPT = 1
EXIT_CANNOT_CONNECT = 2
EXIT_CONNECTION_BROKE = 3
EXIT_REFUSED = 5
EXIT_INVALID_VALUE = 6

# A watch outlives a DSM restart; a one-shot command should fail fast instead.
WATCH_RECONNECT_TIMEOUT = 30.0
# `tree` stops descending here: a guard, not a limit anyone should meet.
MAX_TREE_DEPTH = 64

EPILOG = """exit codes: 0 success, 1 keyboard interrupt, 2 cannot connect to the server (or a usage
error), 3 the connection broke during the request, 5 the server refused the request (its code and
text on stderr), 6 get of a value that is not valid (UNDEFINED/EXPIRED, printed as the word)"""


class CommandFailed(Exception):
    """Ends the command with `exit_code`; the message goes to standard error."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def add_common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options every command takes, before or after its name. Only the top-level parser holds
    the defaults: a subcommand's own default would overwrite what was given before its name."""
    default_server = os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_ADDRESS

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--server", default=default(default_server), metavar="HOST:PORT|PATH",
                        help="the Status Server: host:port or a Unix socket path such as "
                             "<run-dir>/statserv.sock (default $%s, else %s; now %s)"
                             % (ENVIRONMENT_VARIABLE, DEFAULT_ADDRESS, default_server))
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print get, ls, tree and stat results as JSON")
    parser.add_argument("--request-timeout", type=_seconds, default=default(10.0), metavar="S",
                        help="how long to wait for each answer (default 10)")
    parser.add_argument("--reconnect-timeout", type=_seconds, default=default(None), metavar="S",
                        help="how long to keep reconnecting when the connection breaks "
                             "(default: 0, watch %g)" % WATCH_RECONNECT_TIMEOUT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsmctl.py", epilog=EPILOG,
        description="Read, write and watch the Drive State Monitor's Status Server tree.")
    add_common_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, epilog=EPILOG)
        add_common_options(sub, defaults=False)
        return sub

    get = command("get", "print a value (UNDEFINED/EXPIRED printed as the word, exit 6)")
    get.add_argument("name")
    put = command("put", "set a value")
    put.add_argument("name")
    put.add_argument("value")
    put.add_argument("--lifetime", type=_seconds, metavar="S",
                     help="the value reads EXPIRED unless updated within S seconds (0: never)")
    put.add_argument("--create", action="store_true",
                     help="create the object first (TOUCH) if it does not exist")
    put.add_argument("--type", choices=("string", "int", "float", "bool"),
                     help="with --create: the type of a new object")
    put.add_argument("--comment", help="with --create: the object's comment")
    ls = command("ls", "list a directory")
    ls.add_argument("path", nargs="?", default="/")
    tree = command("tree", "list everything under a directory, indented")
    tree.add_argument("path", nargs="?", default="/")
    stat = command("stat", "print every attribute of an object or directory")
    stat.add_argument("name")
    watch = command("watch", "print each change of objects or directories as it happens, until "
                             "Ctrl-C, --count changes or --timeout seconds")
    watch.add_argument("names", nargs="+", metavar="NAME")
    watch.add_argument("--count", type=_positive_int, metavar="N", help="stop after N changes")
    watch.add_argument("--timeout", type=_seconds, metavar="S", help="stop after S seconds")
    rm = command("rm", "remove an object")
    rm.add_argument("name")
    rmdir = command("rmdir", "remove an empty directory")
    rmdir.add_argument("path")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text) from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("seconds must be 0 or more: %r" % text)
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number: %r" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1: %d" % value)
    return value


# ---------------------------------------------------------------------------------------------
# Output


def display(value: Any) -> str:
    """A value as the server shows it: a valid one in double quotes with escapes, a word bare."""
    return quote_string(value) if is_valid(value) else str(value)


def json_value(name: str, value: Any) -> Dict[str, Any]:
    if value is DIRECTORY:
        return {"name": name, "directory": True}
    return {"name": name, "value": str(value), "valid": is_valid(value)}


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _check(client: StatServClient, result: Any) -> Any:
    """`result`, or CommandFailed with the exit code for the client's last error."""
    if result is not None and result is not False:
        return result
    code, text = client.last_error, client.last_error_text
    if code in (ErrorCode.CONNECTION, ErrorCode.TIMEOUT):
        raise CommandFailed(EXIT_CONNECTION_BROKE, "dsmctl: %s" % text)
    raise CommandFailed(EXIT_REFUSED, "dsmctl: %s %s" % (code.value, text))


# ---------------------------------------------------------------------------------------------
# Commands: each returns the exit code


def command_get(client: StatServClient, options: argparse.Namespace) -> int:
    value = _check(client, client.get(options.name))
    if options.json:
        print_json(json_value(options.name, value))
    else:
        print(value)
    return EXIT_OK if is_valid(value) else EXIT_INVALID_VALUE


def command_put(client: StatServClient, options: argparse.Namespace) -> int:
    if options.create:
        _check(client, client.touch(options.name, comment=options.comment, type=options.type))
    _check(client, client.put(options.name, options.value, lifetime=options.lifetime))
    return EXIT_OK


def command_ls(client: StatServClient, options: argparse.Namespace) -> int:
    entries = _check(client, client.ls(options.path))
    if options.json:
        print_json({"path": options.path, "entries": [json_value(n, v) for n, v in entries]})
    else:
        for name, value in entries:
            print(name + "/" if value is DIRECTORY else "%s = %s" % (name, display(value)))
    return EXIT_OK


def walk(client: StatServClient, path: str, depth: int = 0) -> List[Dict[str, Any]]:
    """The entries under `path`, subdirectories with their own "entries"; one vanishing while it
    is walked is left out."""
    entries = client.ls(path)
    if entries is None:
        if depth and client.last_error in (ErrorCode.NONEXISTENT, ErrorCode.NOTDIR):
            return []
        _check(client, None)
    result = []
    for name, value in entries:
        item = json_value(name, value)
        if value is DIRECTORY:
            child = path.rstrip("/") + "/" + name
            item["entries"] = walk(client, child, depth + 1) if depth < MAX_TREE_DEPTH else []
        result.append(item)
    return result


def print_tree(items: List[Dict[str, Any]], indent: int) -> None:
    for item in items:
        if item.get("directory"):
            print("%s%s/" % ("  " * indent, item["name"]))
            print_tree(item["entries"], indent + 1)
        else:
            shown = quote_string(item["value"]) if item["valid"] else item["value"]
            print("%s%s = %s" % ("  " * indent, item["name"], shown))


def command_tree(client: StatServClient, options: argparse.Namespace) -> int:
    items = walk(client, options.path)
    if options.json:
        print_json({"path": options.path, "directory": True, "entries": items})
    else:
        print(options.path if options.path.endswith("/") else options.path + "/")
        print_tree(items, 1)
    return EXIT_OK


def command_stat(client: StatServClient, options: argparse.Namespace) -> int:
    attributes = _check(client, client.stat(options.name))
    if options.json:
        shown = {key: (str(value) if key in ("value", "comment") else value)
                 for key, value in attributes.items()}
        if "value" in attributes:
            shown["valid"] = is_valid(attributes["value"])
        print_json(shown)
    else:
        for key, value in attributes.items():
            if key in ("value", "comment"):
                text = display(value)
            elif isinstance(value, bool):
                text = "1" if value else "0"
            else:
                text = str(value)
            print("%s=%s" % (key, text))
    return EXIT_OK


def change_line(when: float, path: str, value: Any) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when)) + ".%03d" % (when % 1 * 1000)
    if value is DIRECTORY:
        return "%s %s/" % (stamp, escape_text(path))
    return "%s %s = %s" % (stamp, escape_text(path), display(value))


def command_watch(client: StatServClient, options: argparse.Namespace) -> int:
    for name in options.names:
        _check(client, client.monitor(name))
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    printed = 0
    while options.count is None or printed < options.count:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        updates = _check(client, client.wait_for_updates(remaining))
        now = time.time()
        for path, value in updates:
            print(change_line(now, path, value), flush=True)
            printed += 1
            if options.count is not None and printed >= options.count:
                break
    return EXIT_OK


def command_rm(client: StatServClient, options: argparse.Namespace) -> int:
    _check(client, client.remove(options.name))
    return EXIT_OK


def command_rmdir(client: StatServClient, options: argparse.Namespace) -> int:
    _check(client, client.rmdir(options.path))
    return EXIT_OK


COMMANDS = {"get": command_get, "put": command_put, "ls": command_ls, "tree": command_tree,
            "stat": command_stat, "watch": command_watch, "rm": command_rm, "rmdir": command_rmdir}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    try:
        parse_address(options.server)
    except ValueError as error:
        parser.error("--server: %s" % error)
    reconnect = options.reconnect_timeout
    if reconnect is None:
        reconnect = WATCH_RECONNECT_TIMEOUT if options.command == "watch" else 0.0
    client = StatServClient("dsmctl", options.server, timeout=options.request_timeout,
                            reconnect_timeout=reconnect)
    try:
        if not client.logon():
            print("dsmctl: %s" % client.last_error_text, file=sys.stderr)
            return EXIT_CANNOT_CONNECT
        try:
            return COMMANDS[options.command](client, options)
        except CommandFailed as failure:
            print(failure.message, file=sys.stderr)
            return failure.exit_code
        finally:
            client.logoff()
    except KeyboardInterrupt:
        return EXIT_INTERRUPT
    except BrokenPipeError:  # stdout closed early (`dsmctl.py tree | head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
