#!/usr/bin/env python3
"""dsmctl: the Drive State Monitor from the command line: drives, statuses, its Status Server tree.

The DSM's queries (port 2203, or <run-dir>/dsm.sock with --unix) and status reports (port 3110):

    dsmctl.py m [SERIAL...] [--csv|--json] [--columns C1,C2,*ipv4_addr] [--drive-list FILE] [--all]
                                            the drives, one row each, sorted by serial number, with
                                            each one's newest status (alias: drives)
    dsmctl.py s [SERIAL...] [-n N|all] [--csv|--json]
                                            the last N statuses per serial number (alias: statuses)
    dsmctl.py w [--yes]                     wipe every drive and status (asks first on a terminal;
                                            without one it needs --yes) (alias: wipe)
    dsmctl.py send-status SERIAL STATUS [--time-stamp TS]
                                            report a status as test scripts do (default time stamp:
                                            now, YYYY-MM-DD HH:MM:SS); prints nothing on success

m and s show every drive, or only those named: serial numbers as arguments, piped on standard input
(one a line, or CSV whose first column is the serial number), or in --drive-list FILE (the same
format). Standard input is read when it is a file, or a pipe that has something (or its end) within
half a second; `-` as a SERIAL (or --drive-list -) always reads it; --all ignores it.

Across a lab (docs/lab.md): m and s take --lab [FILE] or --hosts H1,H2:PORT, ask every DSM at
once (--timeout S each, --strict) and add a HOST column; `dsmctl.py find SERIAL...` shows where each
drive is heard (the lab file from --lab, --hosts, $DSM_LAB or ~/.config/dsm/lab, else --host).

--host HOST[:PORT] (default localhost; the port given replaces --query-port 2203 for m/s/w and
--status-port 3110 for send-status), --unix PATH (the DSM's dsm.sock, or its run dir) for queries.

The Status Server tree (--server):

    dsmctl.py get NAME                      the value (printed raw; UNDEFINED/EXPIRED as the word)
    dsmctl.py put NAME VALUE [--lifetime S] [--create [--type T] [--comment C]]
    dsmctl.py ls [PATH]                     a directory's entries
    dsmctl.py tree [PATH]                   everything under PATH, indented
    dsmctl.py stat NAME                     every attribute
    dsmctl.py watch NAME... [--count N] [--timeout S]
                                            print "time path = value" for each change, live
                                            (a name not there yet: a note on stderr, then
                                            its changes once it is created)
    dsmctl.py rm NAME / rmdir PATH          remove an object / an empty directory

--server host:port or a Unix socket path (default $STATSERV, else localhost:3111); --json prints
m, s, w, get, ls, tree and stat as JSON.

Exit codes:
    0  success (also: w answered "no" at its question, nothing wiped)
    1  keyboard interrupt (Ctrl-C)
    2  cannot connect to the DSM or the server (also a command-line usage error, as argparse does,
       and w without --yes when standard input is not a terminal)
    3  the connection broke during the request (or the DSM/server did not answer in time)
    5  the DSM or server refused the request (an {"error": ...} reply, or a Status Server code): its
       text is printed to standard error
    6  get: the value is not valid (UNDEFINED or EXPIRED, printed as the word); m, s, find: a
       serial number asked for is known to no DSM asked (the known ones are shown)
    7  standard output cannot be written (a full disk, closed): one line on standard error,
       `dsmctl: cannot write standard output: REASON`; a reader that stops early (`| head`,
       EPIPE) is not an error: exit 0, nothing said

Human-readable output (tables, get, ls, tree, stat, watch, messages) shows control characters
(C0, DEL, C1, bidirectional marks, lone surrogates) escaped as \\xNN / \\uNNNN, so data from the
network cannot drive the terminal; --json and --csv keep the data exact (terminal_text.py).
"""
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file: load this folder as the package "DriveStateMonitor" whatever the folder is
    # called (a copy named DriveStateMonitor-2.0 runs too), so the folder alone runs anywhere.
    import importlib.util
    _here = os.path.dirname(os.path.realpath(__file__))
    _spec = importlib.util.spec_from_file_location(
        "DriveStateMonitor", os.path.join(_here, "__init__.py"), submodule_search_locations=[_here])
    if _spec is None or _spec.loader is None:
        raise ImportError("cannot load the DriveStateMonitor package from %s" % _here)
    sys.modules["DriveStateMonitor"] = _package = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_package)
    __package__ = "DriveStateMonitor"

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import stat as stat_mode  # noqa: E402
import time  # noqa: E402
from typing import (Any, Callable, Dict, Iterable, List, NoReturn, Optional, Set, Tuple,  # noqa: E402
                    Union)

from .statserv_client import (DEFAULT_ADDRESS, DIRECTORY, ENVIRONMENT_VARIABLE,  # noqa: E402
                              MIN_RESPONSE_RATE, NONEXISTENT, ErrorCode, StatServClient, is_valid,
                              parse_address)
from . import drive_simulator  # noqa: E402
from . import lab  # noqa: E402
from .options import non_negative_seconds, positive_int, positive_seconds  # noqa: E402
from .statserv_tree import escape_text, quote_string  # noqa: E402
from .terminal_text import escape_controls, json_text  # noqa: E402

EXIT_OK = 0
EXIT_INTERRUPT = 1
EXIT_CANNOT_CONNECT = 2
EXIT_CONNECTION_BROKE = 3
EXIT_REFUSED = 5
EXIT_INVALID_VALUE = 6
EXIT_UNKNOWN_SERIAL = 6  # m/s of a serial number the DSM does not know: nothing valid to show
EXIT_OUTPUT_FAILED = 7  # standard output cannot be written (full disk, closed, read-only)

# A watch outlives a DSM restart; a one-shot command should fail fast instead.
WATCH_RECONNECT_TIMEOUT = 30.0
# `tree` stops descending here: a guard, not a limit anyone should meet.
MAX_TREE_DEPTH = 64

# The DSM's own ports (its defaults; see --query-port, --status-port).
DEFAULT_HOST = "localhost"
DEFAULT_QUERY_PORT = 2203
DEFAULT_STATUS_PORT = 3110
DSM_SOCKET_NAME = "dsm.sock"
END_BYTE = b"\x04"
# A reply slower than this gets a note on standard error (only when that is a terminal).
PROGRESS_AFTER = 1.0
# How long an open pipe on standard input may stay silent before it is taken as no list at all.
STDIN_GRACE = 0.5
START_HINT = " \u2014 is it running? (./runDSM)"

EPILOG = """exit codes: 0 success, 1 keyboard interrupt, 2 cannot connect to the DSM or the server
(or a usage error, or w without --yes and without a terminal), 3 the connection broke during the
request (or no answer in time), 5 the server refused the request (the DSM's {"error": ...} or the
Status Server's code and text on stderr), 6 get of a value that is not valid (UNDEFINED/EXPIRED,
printed as the word), or m/s/find of a serial number the DSM does not know (the known ones are
shown), 7 standard output cannot be written (`dsmctl: cannot write standard output: ...`; a reader
that leaves early, as `| head` does, is not an error: exit 0)"""
SIMULATE_EPILOG = """exit codes: 0 after --rounds, 1 Ctrl-C, 2 cannot send on the interface (or a usage
error), 7 standard output cannot be written"""


class CommandFailed(Exception):
    """Ends the command with `exit_code`; the message goes to standard error."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def add_common_options(parser: argparse.ArgumentParser, defaults: bool,
                       listed: Optional[Iterable[str]] = None) -> None:
    """The options every command takes, before or after its name. Only the top-level parser holds
    the defaults: a subcommand's own default would overwrite what was given before its name.
    `listed`: the options its --help shows (default all); the others are still taken."""
    default_server = os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_ADDRESS
    add_argument = parser.add_argument
    if listed is not None:
        shown = set(listed)

        def add_argument(*names: str, **settings: Any) -> Any:
            if names[0] not in shown:
                settings["help"] = argparse.SUPPRESS
            return parser.add_argument(*names, **settings)

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    add_argument("--server", default=default(default_server), metavar="HOST:PORT|PATH",
                 help="the Status Server: host:port or a Unix socket path such as "
                      "<run-dir>/statserv.sock, or the run dir (default $%s, else %s; now %s)"
                      % (ENVIRONMENT_VARIABLE, DEFAULT_ADDRESS, default_server))
    add_argument("--json", action="store_true", default=default(False),
                 help="print m, s and w as the DSM's raw JSON, and get, ls, tree and stat "
                      "results as JSON")
    add_argument("--host", default=default(DEFAULT_HOST), metavar="HOST[:PORT]",
                 help="the DSM for m, s, w and send-status (default %s); a port given "
                      "here replaces --query-port or --status-port" % DEFAULT_HOST)
    add_argument("--query-port", type=_port, default=default(DEFAULT_QUERY_PORT),
                 metavar="N", help="the DSM's query port (default %d)" % DEFAULT_QUERY_PORT)
    add_argument("--status-port", type=_port, default=default(DEFAULT_STATUS_PORT),
                 metavar="N",
                 help="the DSM's status port (default %d)" % DEFAULT_STATUS_PORT)
    add_argument("--unix", default=default(None), metavar="PATH",
                 help="send m, s and w to the DSM's Unix socket <run-dir>/%s instead "
                      "(PATH: the socket, or the run dir); without --server, the Status Server "
                      "commands go to the statserv.sock beside it" % DSM_SOCKET_NAME)
    add_argument("--request-timeout", type=non_negative_seconds, default=default(10.0), metavar="S",
                 help="how long to wait for each answer (default 10)")
    add_argument("--reconnect-timeout", type=non_negative_seconds, default=default(None), metavar="S",
                 help="how long to keep reconnecting when the connection breaks "
                      "(default: 0, watch %g)" % WATCH_RECONNECT_TIMEOUT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsmctl.py", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The Drive State Monitor from the command line: its drives (m), statuses\n"
                    "(s), wipe (w), status reports (send-status) and its Status Server tree.")
    add_common_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, summary: str, aliases: Iterable[str] = (),
                listed: Optional[Iterable[str]] = None, epilog: str = EPILOG
                ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, epilog=epilog,
                                  aliases=list(aliases))
        add_common_options(sub, defaults=False, listed=listed)
        return sub

    def filtered(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("serials", nargs="*", metavar="SERIAL",
                         help="only these drives (`-`: read serial numbers from standard input); "
                              "serial numbers piped on standard input (ready within %g s) also "
                              "filter" % STDIN_GRACE)
        sub.add_argument("--drive-list", metavar="FILE",
                         help="only the drives in FILE: one serial number a line, or CSV whose "
                              "first column is the serial number (`-`: standard input)")
        sub.add_argument("--all", action="store_true",
                         help="every drive, whatever standard input holds (the default when no "
                              "serial number is given)")
        sub.add_argument("--csv", action="store_true", help="print CSV instead of a table")
        sub.add_argument("--no-header", action="store_true",
                         help="leave out the table's or the CSV's header line")
        add_lab_options(sub)

    drives = command("m", "the DSM's drives, one row each, sorted by serial number: state, model, "
                          "firmware, IPv4 addresses, last seen and the newest status",
                     aliases=["drives"])
    filtered(drives)
    drives.add_argument("--columns", type=_columns, metavar="C1,C2,...",
                        help="the columns to show, any field of the m data (serial_number, model, "
                             "firmware_version, last_seen, state, ...), status and time_stamp "
                             "(the newest status), ipv4_addr (every interface's, in one cell), "
                             "*ipv4_addr (one column per interface, such as eth0.ipv4_addr), "
                             "eth0.ipv4_addr (default %s)" % ",".join(DEFAULT_COLUMNS))
    statuses = command("s", "the last N statuses of each drive, oldest first",
                       aliases=["statuses"])
    filtered(statuses)
    statuses.add_argument("-n", dest="count", type=_history_count, default=1, metavar="N|all",
                          help="how many of each drive's newest statuses (default 1; all: every "
                               "status the DSM keeps)")
    find = command("find", "where each drive is heard: host, interface, address, state, last "
                           "seen, newest status; across the lab (--lab, --hosts, $DSM_LAB or "
                           "the default lab file) or the --host DSM")
    find.add_argument("serials", nargs="+", metavar="SERIAL")
    find.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    find.add_argument("--no-header", action="store_true",
                      help="leave out the table's or the CSV's header line")
    add_lab_options(find)
    wipe = command("w", "wipe every drive and status in the DSM (asks first)", aliases=["wipe"])
    wipe.add_argument("--yes", "-y", action="store_true",
                      help="do not ask (needed when standard input is not a terminal)")
    send = command("send-status", "report one status as test scripts do, and wait for the DSM to "
                                  "acknowledge it; prints nothing on success")
    send.add_argument("serial", metavar="SERIAL")
    send.add_argument("status", metavar="STATUS", help='such as "002"')
    send.add_argument("--time-stamp", metavar="TS",
                      help="the status's time stamp (default: now, YYYY-MM-DD HH:MM:SS)")


    # Its help lists its own options and the two it uses of the common ones (--statuses).
    simulate = command("simulate", "announce N simulated Kinetic drives every --interval seconds "
                                    "on one interface (default lo), until Ctrl-C",
                       listed=("--host", "--status-port"), epilog=SIMULATE_EPILOG)
    drive_simulator.add_arguments(simulate)

    get = command("get", "print a value (UNDEFINED/EXPIRED printed as the word, exit 6)")
    get.add_argument("name")
    put = command("put", "set a value")
    put.add_argument("name")
    put.add_argument("value")
    put.add_argument("--lifetime", type=non_negative_seconds, metavar="S",
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
    watch.add_argument("--count", type=positive_int, metavar="N", help="stop after N changes")
    watch.add_argument("--timeout", type=non_negative_seconds, metavar="S", help="stop after S seconds")
    rm = command("rm", "remove an object")
    rm.add_argument("name")
    rmdir = command("rmdir", "remove an empty directory")
    rmdir.add_argument("path")
    return parser


def add_lab_options(parser: argparse.ArgumentParser) -> None:
    """--lab, --hosts, --timeout, --strict: ask every DSM of a lab at once (lab.py, docs/lab.md)."""
    parser.add_argument("--lab", nargs="?", const="", metavar="FILE",
                        help="ask every DSM in the lab FILE at once and add a HOST column "
                             "(no FILE: $%s, else %s)" % (lab.ENVIRONMENT_VARIABLE,
                                                         " or ".join(lab.DEFAULT_LAB_FILES)))
    parser.add_argument("--hosts", metavar="H1,H2:PORT",
                        help="like --lab, with the DSMs listed here (host or host:query-port)")
    parser.add_argument("--timeout", type=positive_seconds, metavar="S",
                        help="with --lab/--hosts: each DSM's answer must be complete within S "
                             "seconds (default: --request-timeout, 10)")
    parser.add_argument("--strict", action="store_true",
                        help="with --lab/--hosts: exit %d if any DSM fails (default: only if "
                             "every one does)" % EXIT_CANNOT_CONNECT)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError("not a port number (1-65535): %r" % text)
    return int(text)


def _history_count(text: str) -> Optional[int]:
    """A number of statuses, or None for "all"."""
    if text.lower() == "all":
        return None
    return positive_int(text)


def _columns(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no column names in %r" % text)
    return names


# ---------------------------------------------------------------------------------------------
# Output


def display(value: Any) -> str:
    """A value as the server shows it: a valid one in double quotes with escapes, a word bare."""
    return quote_string(value) if is_valid(value) else str(value)


def json_value(name: str, value: Any) -> Dict[str, Any]:
    if value is DIRECTORY:
        return {"name": name, "directory": True}
    return {"name": name, "value": str(value), "valid": is_valid(value)}


def show(line: str = "", flush: bool = False) -> None:
    """One human-readable line on standard output, with what a terminal acts on escaped
    (terminal_text.escape_controls): every table, listing and message line goes through here."""
    print(escape_controls(line), flush=flush)


def warn(line: str) -> None:
    """One line on standard error, escaped like show(); what was printed before comes first."""
    sys.stdout.flush()
    print(escape_controls(line), file=sys.stderr, flush=True)  # Python < 3.9 buffers a piped stderr


def print_json(data: Any) -> None:
    print(json_text(data, indent=2))


def _check(client: StatServClient, result: Any) -> Any:
    """`result`, or CommandFailed with the exit code for the client's last error."""
    if result is not None and result is not False:
        return result
    _fail(client)


def _fail(client: StatServClient) -> NoReturn:
    """CommandFailed with the exit code for the client's last error."""
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
        show(str(value))
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
            show(name + "/" if value is DIRECTORY else "%s = %s" % (name, display(value)))
    return EXIT_OK


def walk(client: StatServClient, path: str, depth: int = 0) -> List[Dict[str, Any]]:
    """The entries under `path`, subdirectories with their own "entries"; one vanishing while it
    is walked is left out."""
    entries = client.ls(path)
    if entries is None:
        if depth and client.last_error in (ErrorCode.NONEXISTENT, ErrorCode.NOTDIR):
            return []
        _fail(client)
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
            show("%s%s/" % ("  " * indent, item["name"]))
            print_tree(item["entries"], indent + 1)
        else:
            shown = quote_string(item["value"]) if item["valid"] else item["value"]
            show("%s%s = %s" % ("  " * indent, item["name"], shown))


def command_tree(client: StatServClient, options: argparse.Namespace) -> int:
    items = walk(client, options.path)
    if options.json:
        print_json({"path": options.path, "directory": True, "entries": items})
    else:
        show(options.path if options.path.endswith("/") else options.path + "/")
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
            show("%s=%s" % (key, text))
    return EXIT_OK


def change_line(when: float, path: str, value: Any) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when)) + ".%03d" % (when % 1 * 1000)
    if value is DIRECTORY:
        return "%s %s/" % (stamp, escape_text(path))
    return "%s %s = %s" % (stamp, escape_text(path), display(value))


def command_watch(client: StatServClient, options: argparse.Namespace) -> int:
    for name in options.names:
        if _check(client, client.monitor(name)) is NONEXISTENT:
            # Watching a name before it exists is allowed (it shows when created), but a typo
            # would otherwise wait in silence for ever.
            warn("dsmctl: %s does not exist (yet): watching for it to appear" % name)
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    printed = 0
    while options.count is None or printed < options.count:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        updates = _check(client, client.wait_for_updates(remaining))
        now = time.time()
        for path, value in updates:
            show(change_line(now, path, value), flush=True)
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


# ---------------------------------------------------------------------------------------------
# The DSM's query and status ports


Address = Union[str, Tuple[str, int]]


def dsm_address(options: argparse.Namespace, port: int) -> Tuple[str, int]:
    """(host, port) from --host HOST[:PORT] (a port there wins over `port`); ValueError if bad."""
    text = options.host.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError("not HOST[:PORT]: %r" % text)
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("not a port number in %r" % text)
        port = int(port_text)
    return (host or DEFAULT_HOST, port)


def query_address(options: argparse.Namespace) -> Address:
    if options.unix:
        path = options.unix
        return os.path.join(path, DSM_SOCKET_NAME) if os.path.isdir(path) else path
    return dsm_address(options, options.query_port)


def show_address(address: Address) -> str:
    if isinstance(address, str):
        return address
    host, port = address
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def _reason(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, FileNotFoundError):
        return "no such socket"
    if isinstance(error, socket.gaierror):
        return "unknown host (%s)" % (error.strerror or error)
    if isinstance(error, socket.timeout):
        return "timed out"
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return (text[:1].lower() + text[1:]) or type(error).__name__


def connect_dsm(address: Address, timeout: float, what: str) -> socket.socket:
    """A connection to the DSM, or CommandFailed(2) with a message that says what to do."""
    try:
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout or None)
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(address, timeout=timeout or None)
    except OSError as error:
        hint = START_HINT if isinstance(error, (ConnectionRefusedError, FileNotFoundError)) else ""
        raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: cannot reach the %s at %s: %s%s"
                            % (what, show_address(address), _reason(error), hint)) from None
    return sock


class Progress:
    """A note on standard error while a slow reply arrives: only on a terminal, only after
    PROGRESS_AFTER seconds, erased when the reply is complete."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.enabled = sys.stderr.isatty()
        self.start = time.monotonic()
        self.shown_at = 0.0

    def update(self, received: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.start < PROGRESS_AFTER or now - self.shown_at < 0.5:
            return
        self.shown_at = now
        size = "%d KiB" % (received // 1024) if received >= 1024 else "%d bytes" % received
        sys.stderr.write("\r\033[Kdsmctl: %s (%.0f s, %s so far)" % (self.text, now - self.start,
                                                                   size))
        sys.stderr.flush()

    def done(self) -> None:
        if self.shown_at:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def exchange(address: Address, request: bytes, replies: int, timeout: float, what: str,
             doing: str) -> List[bytes]:
    """Sends `request` and reads `replies` answers, each ending at the end byte. `timeout`: the
    longest wait for the next bytes, and for the whole reply beyond what MIN_RESPONSE_RATE (the
    Status Server client's rule) allows for its size (0: none). CommandFailed 2 (no connection)
    or 3 (broke, or too slow)."""
    sock = connect_dsm(address, timeout, what)
    shown = show_address(address)
    progress = Progress("waiting for the %s at %s to %s" % (what, shown, doing))
    data = bytearray()
    try:
        with sock:
            sock.sendall(request)  # a few bytes, within the socket's timeout
            started = last_data = time.monotonic()
            found = 0
            while found < replies:
                ready, _, _ = select.select([sock], [], [], 0.25)
                now = time.monotonic()
                if timeout and data and now - started >= timeout + len(data) / MIN_RESPONSE_RATE:
                    raise CommandFailed(EXIT_CONNECTION_BROKE,
                                        "dsmctl: the %s at %s did not answer within %.1f s (%d "
                                        "bytes so far, slower than %d KiB/s; waiting to %s)"
                                        % (what, shown, now - started, len(data),
                                           MIN_RESPONSE_RATE // 1024, doing))
                if not ready:
                    if timeout and now - last_data >= timeout:
                        raise CommandFailed(EXIT_CONNECTION_BROKE,
                                            "dsmctl: the %s at %s did not answer within %g s "
                                            "(waiting to %s)" % (what, shown, timeout, doing))
                    progress.update(len(data))
                    continue
                chunk = sock.recv(1 << 20)  # readable: does not block
                if not chunk:
                    raise CommandFailed(EXIT_CONNECTION_BROKE,
                                        "dsmctl: the %s at %s closed the connection before "
                                        "answering (waiting to %s)" % (what, shown, doing))
                found += chunk.count(END_BYTE)
                data += chunk
                if len(data) > lab.MAX_REPLY_BYTES:  # no DSM queues more (its --max-output)
                    raise CommandFailed(EXIT_REFUSED, "dsmctl: the %s at %s sent a reply larger "
                                        "than %d bytes: refused" % (what, shown,
                                                                    lab.MAX_REPLY_BYTES))
                last_data = now
                progress.update(len(data))
    except OSError as error:
        raise CommandFailed(EXIT_CONNECTION_BROKE, "dsmctl: the connection to the %s at %s broke: "
                            "%s" % (what, shown, _reason(error))) from None
    finally:
        progress.done()
    return bytes(data).split(END_BYTE)[:replies]


def query(options: argparse.Namespace, letters: str) -> List[Tuple[bytes, Any]]:
    """The DSM's answers to the query letters, on one connection: (raw JSON text, value) each.
    An {"error": ...} answer ends the command with exit 5."""
    address = query_address(options)
    doing = "answer " + " and ".join(letters)
    # Space-separated: each letter a whole token (the DSM answers them in order, then closes).
    replies = exchange(address, " ".join(letters).encode("ascii"), len(letters),
                       options.request_timeout,
                       "DSM", doing)
    answers = []
    for letter, raw in zip(letters, replies):
        text = raw.decode("utf-8", "replace").strip()
        try:
            value = json.loads(text)
        except ValueError:
            if letter == "w" and "success" in text.lower():  # the original DSM's plain text
                value = {"wiped": text}
            else:
                raise CommandFailed(EXIT_REFUSED, "dsmctl: the DSM at %s answered %s with "
                                    "something that is not JSON: %.200r"
                                    % (show_address(address), letter, text)) from None
        except RecursionError:
            raise CommandFailed(EXIT_REFUSED, "dsmctl: the DSM at %s answered %s with JSON "
                                "nested too deep to read (%d bytes)"
                                % (show_address(address), letter, len(raw))) from None
        if isinstance(value, dict) and "error" in value:
            raise CommandFailed(EXIT_REFUSED, "dsmctl: the DSM at %s refused %s: %s"
                                % (show_address(address), letter, value["error"]))
        if not isinstance(value, dict):
            raise CommandFailed(EXIT_REFUSED, "dsmctl: the DSM at %s answered %s with %.200r, "
                                "not a JSON object" % (show_address(address), letter, text))
        answers.append((raw, value))
    return answers


# ---------------------------------------------------------------------------------------------
# Which drives: serial numbers from arguments, standard input or a drive-list file


def read_serials(lines: Iterable[str]) -> List[str]:
    """The first CSV column of each line; blank lines, `#` comments and a header (a first cell
    naming a serial number, such as serial_number) left out."""
    serials: List[str] = []
    for row in csv.reader(lines, skipinitialspace=True):
        if not row:
            continue
        cell = row[0].strip()
        if not cell or cell.startswith("#"):
            continue
        if not serials and cell.lower().replace(" ", "_") in ("serial", "serial_number",
                                                                "serialnumber", "serial_no"):
            continue
        serials.append(cell)
    return serials


def _stdin_is_piped() -> bool:
    """True when standard input is a file, or a pipe or socket with something to read (or its end)
    within STDIN_GRACE seconds: only then are serial numbers read from it without being asked to.
    Not a terminal or /dev/null, and not the pipe `ssh host dsmctl.py m` leaves open, unused."""
    try:
        fileno = sys.stdin.fileno()
        mode = os.fstat(fileno).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    if stat_mode.S_ISREG(mode):
        return True
    if not (stat_mode.S_ISFIFO(mode) or stat_mode.S_ISSOCK(mode)):
        return False
    try:
        return bool(select.select([fileno], [], [], STDIN_GRACE)[0])
    except (OSError, ValueError):
        return False


def wanted_serials(options: argparse.Namespace) -> Optional[List[str]]:
    """The serial numbers asked for, or None for every drive."""
    if options.all:
        if options.serials or options.drive_list:
            raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: --all and serial numbers (or "
                                "--drive-list) do not go together")
        return None
    serials: List[str] = []
    asked = False
    stdin_read = False
    for serial in options.serials:
        if serial == "-":
            serials += read_serials(sys.stdin)
            stdin_read = True
        else:
            serials.append(serial.strip())
        asked = True
    if options.drive_list:
        asked = True
        if options.drive_list == "-":
            serials += read_serials(sys.stdin)
            stdin_read = True
        else:
            try:
                with open(options.drive_list, newline="", encoding="utf-8-sig") as f:
                    serials += read_serials(f)
            except OSError as error:
                raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: cannot read the drive list "
                                    "%s: %s" % (options.drive_list, _reason(error))) from None
    if not asked and not stdin_read and _stdin_is_piped():
        piped = read_serials(sys.stdin)
        if piped:
            return piped
    return serials if asked else None


def pick(data: Dict[str, Any], serials: Optional[List[str]]) -> Dict[str, Any]:
    """The entries of `data` asked for (all when `serials` is None), sorted by serial number."""
    keys = sorted(data) if serials is None else sorted(set(serials) & set(data))
    return {key: data[key] for key in keys}


def warn_unknown(serials: Optional[List[str]], known: Iterable[str]) -> int:
    """Says which serial numbers asked for the DSM does not know; EXIT_UNKNOWN_SERIAL if any (the
    known ones are still shown), else EXIT_OK."""
    if serials is None:
        return EXIT_OK
    known = set(known)
    unknown = sorted(set(serials) - known)
    if unknown:
        warn("dsmctl: not known to the DSM (no announcement heard, no status reported): %s"
             % ", ".join(unknown))
        return EXIT_UNKNOWN_SERIAL
    return EXIT_OK


def explain_empty(options: argparse.Namespace) -> str:
    """Why the drive table is empty, and what to try: where the DSM listens (from its /dsm/ facts
    in the Status Server, when reachable) and the simulator."""
    where = flags = ""
    server = options.server
    query_socket = query_address(options)
    if isinstance(query_socket, str):  # --unix: the Status Server's socket is beside it, in the run dir
        server = os.path.join(os.path.dirname(query_socket), "statserv.sock")
    client = StatServClient("dsmctl", server, timeout=2.0, reconnect_timeout=0.0)
    try:
        if client.logon():
            interfaces, group = client.get("/dsm/interfaces"), client.get("/dsm/mcast")
            if is_valid(interfaces) and is_valid(group):
                where = " on %s, interfaces %s" % (group, interfaces or "none")
                mcast_group, _, mcast_port = str(group).rpartition(":")
                if mcast_group != drive_simulator.DEFAULT_MCAST_GROUP:
                    flags += " --mcast-group %s" % mcast_group
                if mcast_port != str(drive_simulator.DEFAULT_MCAST_PORT):
                    flags += " --mcast-port %s" % mcast_port
    finally:
        client.logoff()
    me = "dsmctl.py"
    if sys.argv and sys.argv[0].endswith("dsmctl.py"):
        me = os.path.relpath(os.path.abspath(sys.argv[0]))
    return ("dsmctl: no drives heard yet: drives announce themselves by multicast every few "
            "seconds, and the DSM listens%s. No drives on this network? Try: %s simulate "
            "--drives 5%s" % (where, me, flags))


# ---------------------------------------------------------------------------------------------
# Columns, tables and CSV

DEFAULT_COLUMNS = ("serial_number", "state", "model", "firmware_version", "ipv4_addr", "last_seen",
                   "status")
COLUMN_ALIASES = {"serial": "serial_number", "firmware": "firmware_version",
                  "ipv4": "ipv4_addr", "ipv6": "ipv6_addr", "mac": "mac_addr"}
INTERFACE_FIELDS = ("ipv4_addr", "ipv6_addr", "mac_addr")
STATUS_FIELDS = ("status", "time_stamp")
HEADINGS = {"serial_number": "SERIAL", "firmware_version": "FIRMWARE", "ipv4_addr": "IPV4",
            "last_seen": "LAST SEEN", "time_stamp": "TIME STAMP"}

Row = Dict[str, Any]
Getter = Callable[[Row], Any]


def _interfaces(row: Row) -> List[Tuple[str, Dict[str, Any]]]:
    found = row.get("network_interfaces")
    if not isinstance(found, list):
        return []
    return [(str(item.get("name") or "if%d" % index), item)
            for index, item in enumerate(found) if isinstance(item, dict)]


def _field(name: str) -> Getter:
    if name in INTERFACE_FIELDS:
        return lambda row: " ".join(str(item[name]) for _, item in _interfaces(row)
                                    if item.get(name) not in (None, "")) or row.get(name)
    if name in STATUS_FIELDS:
        return lambda row: (row.get("_latest") or {}).get(name)
    return lambda row: row.get(name)


def _interface_field(interface: str, name: str) -> Getter:
    return lambda row: next((item.get(name) for found, item in _interfaces(row)
                             if found == interface), None)


# The m data's fields (spec: the announcement's fields plus what the DSM adds beside last_seen).
KNOWN_FIELDS = ("serial_number", "state", "model", "firmware_version", "manufacturer",
                "world_wide_name", "protocol_version", "port", "tlsPort", "network_interfaces",
                "last_seen", "last_seen_epoch", "source_address", "interface")


def unknown_columns(names: Iterable[str], rows: List[Row]) -> List[str]:
    """The column names that are neither a known field, an alias, an interface field (`F`, `*F`,
    `eth0.F`), a status field, nor a field of any row of this m data."""
    interface_fields = INTERFACE_FIELDS + ("name",)
    present: Set[str] = set()
    for row in rows:
        present.update(row)
    bad = []
    for name in names:
        name = COLUMN_ALIASES.get(name, name)
        field = COLUMN_ALIASES.get(name[1:], name[1:]) if name.startswith("*") else name
        if "." in field and field not in present:
            field = COLUMN_ALIASES.get(field.partition(".")[2], field.partition(".")[2])
            if field in interface_fields:
                continue
        elif name.startswith("*"):
            if field in interface_fields:
                continue
        elif field in KNOWN_FIELDS or field in STATUS_FIELDS or field in INTERFACE_FIELDS \
                or field in present:
            continue
        bad.append(name)
    return bad


def valid_columns_text() -> str:
    return ("valid columns: %s, %s, %s (every interface's, in one cell), *F (one column per "
            "interface) or eth0.F for F in %s; aliases %s; and any other field the drives "
            "announce" % (", ".join(KNOWN_FIELDS), ", ".join(STATUS_FIELDS),
                          ", ".join(INTERFACE_FIELDS), ", ".join(INTERFACE_FIELDS + ("name",)),
                          ", ".join("%s=%s" % item for item in COLUMN_ALIASES.items())))


def expand_columns(names: Iterable[str], rows: List[Row]) -> List[Tuple[str, Getter]]:
    """(heading, getter) for each column: `*field` becomes one column per interface name met in
    the rows (eth0.ipv4_addr, eth1.ipv4_addr, ...); `eth0.field` is that interface's field."""
    columns = []
    for name in names:
        name = COLUMN_ALIASES.get(name, name)
        if name.startswith("*"):
            field = COLUMN_ALIASES.get(name[1:], name[1:])
            seen: List[str] = []
            for row in rows:
                for interface, _ in _interfaces(row):
                    if interface not in seen:
                        seen.append(interface)
            for interface in seen:
                columns.append(("%s.%s" % (interface, field), _interface_field(interface, field)))
        elif "." in name and not any(name in row for row in rows):
            interface, _, field = name.partition(".")
            columns.append((name, _interface_field(interface, COLUMN_ALIASES.get(field, field))))
        else:
            columns.append((name, _field(name)))
    return columns


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    # A NUL shown as \x00: Python 3.10's csv cannot write one at all, 3.8 quotes it, 3.11 does
    # not, and on a terminal it is invisible (JSON, above, escapes it as \u0000 anyway).
    return str(value).replace("\x00", "\\x00")


def print_rows(headings: List[str], rows: List[List[str]], options: argparse.Namespace) -> None:
    """CSV (--csv) or an aligned table, each with its header line unless --no-header. The CSV
    keeps every cell as given; the table escapes what a terminal acts on (escape_controls), in
    headings too (`*ipv4_addr` names columns after the drives' interfaces)."""
    if options.csv:
        # Lines end in "\n"; a cell holding a CR is quoted too (csv quotes only the terminator's
        # characters, so with "\n" alone a bare CR would split the row for a CSV reader).
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        for row in rows if options.no_header else [headings] + rows:
            buffer.seek(0)
            buffer.truncate()
            writer.writerow(row)
            sys.stdout.write(buffer.getvalue()[:-2] + "\n")
        return
    shown = [[escape_controls(cell) or "-" for cell in row] for row in rows]
    titles = [escape_controls(HEADINGS.get(heading, heading.upper().replace("_", " ")))
              for heading in headings]
    lines = shown if options.no_header else [titles] + shown
    if not lines:
        return
    widths = [max(len(line[i]) for line in lines) for i in range(len(headings))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def print_raw_or(raw: bytes, value: Any, unchanged: bool) -> None:
    """The DSM's JSON as it sent it when nothing was left out, else `value` the same way."""
    text = raw.strip()
    # (JSON holds no raw control byte, so ASCII without DEL is safe for a terminal)
    if unchanged and text.isascii() and b"\x7f" not in text:
        print(text.decode("ascii"))  # a DSM's JSON is ASCII (ensure_ascii): as it came
    else:  # left out, or not what a DSM sends: the same data, nothing a terminal acts on
        print(json_text(value, ensure_ascii=True))


# ---------------------------------------------------------------------------------------------
# DSM commands: each returns the exit code


def command_drives(options: argparse.Namespace) -> int:
    if lab_wanted(options):
        return lab_drives(options)
    serials = wanted_serials(options)
    names = options.columns or list(DEFAULT_COLUMNS)
    if options.json:
        (raw, drives), = query(options, "m")
        chosen = pick(drives, serials)
        code = warn_unknown(serials, drives)
        print_raw_or(raw, chosen, serials is None)
        return code
    (_, drives), (_, statuses) = query(options, "ms")
    rows: List[Row] = []
    for serial in sorted(set(drives) | set(statuses)):
        if serials is not None and serial not in serials:
            continue
        drive = drives.get(serial)
        row = dict(drive) if isinstance(drive, dict) else {}
        row.setdefault("serial_number", serial)
        history = statuses.get(serial)
        if isinstance(history, list) and history and isinstance(history[-1], dict):
            row["_latest"] = history[-1]
        rows.append(row)
    bad = unknown_columns(names, rows)
    if bad:
        raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: unknown column%s %s; %s" % (
            "s" if len(bad) > 1 else "", ", ".join(map(repr, bad)), valid_columns_text()))
    code = warn_unknown(serials, list(drives) + list(statuses))
    columns = expand_columns(names, rows)
    print_rows([heading for heading, _ in columns],
               [[cell_text(get(row)) for _, get in columns] for row in rows], options)
    if not drives and serials is None:
        warn(explain_empty(options))
    return code


def command_statuses(options: argparse.Namespace) -> int:
    if lab_wanted(options):
        return lab_statuses(options)
    serials = wanted_serials(options)
    (raw, statuses), = query(options, "s")
    chosen = pick(statuses, serials)
    code = warn_unknown(serials, statuses)
    if options.count is not None:
        chosen = {serial: history[-options.count:] if isinstance(history, list) else history
                  for serial, history in chosen.items()}
    if options.json:
        print_raw_or(raw, chosen, serials is None and options.count is None)
        return code
    rows = []
    for serial, history in chosen.items():
        for entry in history if isinstance(history, list) else []:
            entry = entry if isinstance(entry, dict) else {"status": entry}
            rows.append([serial, cell_text(entry.get("time_stamp")),
                         cell_text(entry.get("status"))])
    print_rows(["serial_number", "time_stamp", "status"], rows, options)
    return code


def confirm(question: str) -> bool:
    sys.stderr.write(escape_controls(question) + " [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:
        sys.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")


def command_wipe(options: argparse.Namespace) -> int:
    where = show_address(query_address(options))
    if not options.yes:
        if not sys.stdin.isatty():
            raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: w wipes every drive and status in "
                                "the DSM at %s; without a terminal to ask on, add --yes" % where)
        if not confirm("Wipe every drive and status in the DSM at %s?" % where):
            warn("dsmctl: nothing wiped")
            return EXIT_OK
    (raw, answer), = query(options, "w")
    if options.json:
        print_raw_or(raw, answer, True)
        return EXIT_OK
    wiped = answer.get("wiped", answer)
    if isinstance(wiped, dict):
        show("wiped in the DSM at %s: %s" % (where, ", ".join(
            "%s: %s" % (key.replace("_", " "), value) for key, value in wiped.items())))
    else:
        show("wiped in the DSM at %s: %s" % (where, wiped))
    return EXIT_OK


def command_send_status(options: argparse.Namespace) -> int:
    stamp = options.time_stamp
    if stamp is None:
        # The lab's form, as test scripts and the simulator write it ("2026-11-30 10:01:05").
        stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    message = json.dumps({"serial_number": options.serial, "time_stamp": stamp,
                          "status": options.status}).encode("utf-8")
    address = dsm_address(options, options.status_port)
    reply, = exchange(address, message, 1, options.request_timeout, "DSM's status port",
                      "acknowledge the status")
    text = reply.decode("utf-8", "replace").strip()
    if text:
        try:
            error = json.loads(text)
        except ValueError:
            error = text
        if isinstance(error, dict) and "error" in error:
            error = error["error"]
        raise CommandFailed(EXIT_REFUSED, "dsmctl: the DSM at %s refused the status: %s"
                            % (show_address(address), error))
    return EXIT_OK


def command_simulate(options: argparse.Namespace) -> int:
    return drive_simulator.run(options, dsm_address(options, options.status_port))
# ---------------------------------------------------------------------------------------------
# Across the lab (--lab, --hosts; find): lab.py asks every DSM at once, this prints


def lab_wanted(options: argparse.Namespace) -> bool:
    return options.lab is not None or bool(options.hosts)


def lab_hosts(options: argparse.Namespace, fallback: bool) -> List[lab.LabHost]:
    """The DSMs asked: --hosts, --lab FILE, --lab alone ($DSM_LAB / default file); with
    `fallback`, also a lab file found without --lab, else the --host DSM."""
    try:
        if options.hosts:
            if options.lab is not None:
                raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: --lab and --hosts do not go "
                                    "together")
            return lab.parse_hosts_option(options.hosts)
        path = options.lab or lab.default_lab_file()
        if path and (options.lab is not None or fallback):
            return lab.read_lab_file(path)
        if options.lab is not None:
            raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: --lab without a FILE: set $%s or "
                                "write %s" % (lab.ENVIRONMENT_VARIABLE, lab.DEFAULT_LAB_FILES[0]))
    except lab.LabFileError as error:
        raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: %s" % error) from None
    if options.unix:
        raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: %s asks DSMs on their query port; "
                            "use --host instead of --unix" % options.command)
    host, port = dsm_address(options, options.query_port)
    return [lab.LabHost(host, port, lab.DEFAULT_HTTP_PORT, show_address((host, port)))]


def ask_lab(options: argparse.Namespace, letters: str, fallback: bool = False
            ) -> List[lab.Answered]:
    """The answers of the DSMs that answered; one stderr line per DSM that did not.
    CommandFailed(2) when none answered, or (--strict) when any did not."""
    hosts = lab_hosts(options, fallback)
    answers = lab.ask_lab(hosts, letters, options.timeout or options.request_timeout or 10.0)
    failed = [answer for answer in answers if answer.error is not None]
    for answer in failed:
        warn("dsmctl: %s (%s): %s" % (answer.host.name, answer.host.address, answer.error))
    if failed and (len(failed) == len(answers) or options.strict):
        raise CommandFailed(EXIT_CANNOT_CONNECT, "dsmctl: %d of %d DSMs did not answer"
                            % (len(failed), len(answers)))
    return [lab.Answered(answer.host, answer.replies) for answer in answers
            if answer.error is None and answer.replies is not None]


def _warn_unknown_in_lab(serials: Optional[List[str]], known: Iterable[str]) -> int:
    """As warn_unknown, for every DSM asked: EXIT_UNKNOWN_SERIAL if one is known to none."""
    unknown = sorted(set(serials or ()) - set(known))
    if unknown:
        warn("dsmctl: not known to any DSM asked: %s" % ", ".join(unknown))
        return EXIT_UNKNOWN_SERIAL
    return EXIT_OK


def lab_drives(options: argparse.Namespace) -> int:
    """m across the lab: one row per (DSM, drive), the HOST column first."""
    serials = wanted_serials(options)
    answers = ask_lab(options, "m" if options.json else "ms")
    known: List[str] = []
    if options.json:
        chosen = {answer.host.name: pick(answer.replies[0], serials) for answer in answers}
        code = _warn_unknown_in_lab(serials, [s for answer in answers
                                              for s in answer.replies[0]])
        print(json_text(chosen, ensure_ascii=True))
        return code
    rows: List[Row] = []
    for answer in answers:
        drives, statuses = answer.replies
        for serial in sorted(set(drives) | set(statuses)):
            known.append(serial)
            if serials is not None and serial not in serials:
                continue
            drive = drives.get(serial)
            row = dict(drive) if isinstance(drive, dict) else {}
            row.setdefault("serial_number", serial)
            row["host"] = answer.host.name
            history = statuses.get(serial)
            if isinstance(history, list) and history and isinstance(history[-1], dict):
                row["_latest"] = history[-1]
            rows.append(row)
    rows.sort(key=lambda row: str(row["serial_number"]))  # stable: hosts in lab-file order
    code = _warn_unknown_in_lab(serials, known)
    columns = expand_columns(["host"] + list(options.columns or DEFAULT_COLUMNS), rows)
    print_rows([heading for heading, _ in columns],
               [[cell_text(get(row)) for _, get in columns] for row in rows], options)
    return code


def lab_statuses(options: argparse.Namespace) -> int:
    """s across the lab: HOST, SERIAL, TIME STAMP, STATUS; --json: {host: the DSM's s}."""
    serials = wanted_serials(options)
    answers = ask_lab(options, "s")
    chosen = {}
    for answer in answers:
        picked = pick(answer.replies[0], serials)
        if options.count is not None:
            picked = {serial: history[-options.count:] if isinstance(history, list) else history
                      for serial, history in picked.items()}
        chosen[answer.host.name] = picked
    code = _warn_unknown_in_lab(serials, [s for answer in answers for s in answer.replies[0]])
    if options.json:
        print(json_text(chosen, ensure_ascii=True))
        return code
    rows = []
    for host, statuses in chosen.items():
        for serial, history in statuses.items():
            for entry in history if isinstance(history, list) else []:
                entry = entry if isinstance(entry, dict) else {"status": entry}
                rows.append([host, serial, cell_text(entry.get("time_stamp")),
                             cell_text(entry.get("status"))])
    rows.sort(key=lambda row: row[1])
    print_rows(["host", "serial_number", "time_stamp", "status"], rows, options)
    return code


FIND_COLUMNS = ("host", "serial_number", "interface", "source_address", "ipv4_addr", "state",
                "last_seen", "status", "time_stamp")


def command_find(options: argparse.Namespace) -> int:
    """Where each drive is heard, on every DSM that knows it (lab.find_drives)."""
    serials = [serial.strip() for serial in options.serials if serial.strip()]
    rows = lab.find_drives(ask_lab(options, "ms", fallback=True), serials)
    missing = [serial for serial in serials if not any(row["serial_number"] == serial
                                                       for row in rows)]
    if missing:
        warn("dsmctl: not heard by any DSM asked: %s" % ", ".join(missing))
    if options.json:
        print(json_text(rows, ensure_ascii=True))
    else:
        print_rows(list(FIND_COLUMNS), [[cell_text(row[name]) for name in FIND_COLUMNS]
                                        for row in rows], options)
    return EXIT_UNKNOWN_SERIAL if missing else EXIT_OK


DSM_COMMANDS = {"m": command_drives, "drives": command_drives, "s": command_statuses,
                "statuses": command_statuses, "w": command_wipe, "wipe": command_wipe,
                "send-status": command_send_status, "simulate": command_simulate,
                "find": command_find}


COMMANDS = {"get": command_get, "put": command_put, "ls": command_ls, "tree": command_tree,
            "stat": command_stat, "watch": command_watch, "rm": command_rm, "rmdir": command_rmdir}


class OutputFailed(Exception):
    """Standard output cannot be written; `reason` says why ("no space left on device")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CheckedOutput:
    """Standard output for the length of one command: a write or flush that fails raises
    OutputFailed (not an OSError, which the socket code around would take for its own), except
    BrokenPipeError: the reader left (`| head`), which main() keeps quiet. A character the stream
    cannot encode (a lone surrogate in --csv, an ASCII-only locale) is written backslash-escaped.
    `stream` None is a closed standard output (`>&-`): any write fails, a command that prints
    nothing (send-status, put, rm) still succeeds."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def _call(self, operation: Callable[[], Any]) -> Any:
        if self.stream is None:
            raise OutputFailed("it is closed")
        try:
            return operation()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise OutputFailed(_reason(error)) from None
        except ValueError as error:  # "I/O operation on closed file"
            raise OutputFailed(str(error)) from None

    def write(self, text: str) -> int:
        def write() -> int:
            try:
                return self.stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(self.stream, "encoding", None) or "utf-8"
                return self.stream.write(text.encode(encoding, "backslashreplace")
                                         .decode(encoding))
        return self._call(write)

    def flush(self) -> None:
        if self.stream is not None:
            self._call(self.stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class ErrorOutput:
    """Standard error for the length of one command. A line it cannot take (a full disk, closed:
    `2>&-`, which makes sys.stderr None and print(file=None) write to standard output) is
    dropped, as there is nowhere left to say so: the command's own exit code stands, not 1 (a
    keyboard interrupt's) from a traceback nobody sees."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.failed = stream is None

    def _give_up(self) -> None:
        self.failed = True
        _silence_stdout(self.stream)  # the interpreter's flush at exit must not fail either

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):
                self._give_up()
        return len(text)

    def flush(self) -> None:
        if not self.failed:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self._give_up()

    def isatty(self) -> bool:
        return not self.failed and self.stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _silence_stdout(stream: Any) -> None:
    """Points file descriptor 1 at /dev/null after a failed write, so the interpreter's flush at
    exit does not fail again ("Exception ignored ...", exit 120); what is still buffered is lost
    either way."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no descriptor (a test's capture): nothing to do
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """Runs one command; its exit code. Standard output that cannot be written is one line on
    standard error, exit 7; a reader that leaves early (`| head`, EPIPE) is not an error: exit 0,
    nothing said."""
    real_stdout, real_stderr = sys.stdout, sys.stderr
    sys.stdout = CheckedOutput(real_stdout)
    sys.stderr = ErrorOutput(real_stderr)
    try:
        try:
            code = _run(argv)
        except SystemExit as leaving:  # argparse: --help, or a usage error
            code = leaving.code if isinstance(leaving.code, int) else EXIT_CANNOT_CONNECT
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPT
    except BrokenPipeError:  # stdout closed early (`dsmctl.py tree | head`): not an error
        _silence_stdout(real_stdout)
        return EXIT_OK
    except OutputFailed as failure:
        _silence_stdout(real_stdout)
        print("dsmctl: cannot write standard output: %s" % failure.reason, file=sys.stderr)
        return EXIT_OUTPUT_FAILED
    finally:
        sys.stderr.flush()
        sys.stdout, sys.stderr = real_stdout, real_stderr


def _run(argv: Optional[List[str]]) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.command in DSM_COMMANDS:
        return run_dsm_command(parser, options)
    return run_statserv_command(parser, options)


def run_dsm_command(parser: argparse.ArgumentParser, options: argparse.Namespace) -> int:
    try:
        dsm_address(options, DEFAULT_QUERY_PORT)
    except ValueError as error:
        parser.error("--host: %s" % error)
    if getattr(options, "csv", False) and options.json:
        parser.error("--csv and --json do not go together")
    try:
        return DSM_COMMANDS[options.command](options)
    except CommandFailed as failure:
        warn(failure.message)
        return failure.exit_code


def run_statserv_command(parser: argparse.ArgumentParser, options: argparse.Namespace) -> int:
    if getattr(options, "unix", None) and options.server == DEFAULT_ADDRESS \
            and not os.environ.get(ENVIRONMENT_VARIABLE):
        # --unix names the DSM: its Status Server is the statserv.sock beside its query socket, not
        # whichever DSM listens on localhost:3111 (an explicit --server or $STATSERV still wins).
        query_socket = query_address(options)
        if isinstance(query_socket, str):
            options.server = os.path.join(os.path.dirname(query_socket), "statserv.sock")
    if "/" in options.server and os.path.isdir(options.server):
        # a run dir, as --unix takes one: its statserv.sock (connecting to the dir itself reads
        # "connection refused", which sends the user looking for a DSM that is running)
        options.server = os.path.join(options.server, "statserv.sock")
    try:
        parse_address(options.server)
    except ValueError as error:
        parser.error("--server: %s" % error)
    reconnect = options.reconnect_timeout
    if reconnect is None:
        reconnect = WATCH_RECONNECT_TIMEOUT if options.command == "watch" else 0.0
    client = StatServClient("dsmctl", options.server, timeout=options.request_timeout,
                            reconnect_timeout=reconnect)
    if not client.logon():
        try:  # say why the way the DSM commands do ("... connection refused — is it running?")
            connect_dsm(parse_address(options.server), options.request_timeout or 2.0,
                        "Status Server").close()
        except CommandFailed as failure:
            warn(failure.message)
            return EXIT_CANNOT_CONNECT
        warn("dsmctl: %s" % client.last_error_text)
        return EXIT_CANNOT_CONNECT
    try:
        return COMMANDS[options.command](client, options)
    except CommandFailed as failure:
        warn(failure.message)
        return failure.exit_code
    finally:
        client.logoff()


if __name__ == "__main__":
    sys.exit(main())
