// The rows of the live page, shared by this host's table (app.js) and the whole-lab view (lab.js).
//
// Theory of operation
// -------------------
// Data comes from one or more DSMs as whole maps (a feed's snapshot, or a poll of /api/drives and
// /api/status) or as changes keyed by serial (a feed's change event; docs/protocol.md). Each DSM's
// data is kept as two Maps, serial -> drive object and serial -> status list (`HostData`). A row
// is one (host, serial) with a drive, a status list or both; `DriveRows` derives each row's
// displayed texts once, when its data changes, never when it is drawn.
//
// Changes mark their rows; the next frame (`DriveRows.flush`) brings the filtered, sorted order up
// to date — a few changed rows are taken out and put back by binary search (O(n) per batch); many,
// or a new filter or sort, sort everything again — and `VirtualTable` draws only the rows in view
// plus a margin, at a fixed row height, with two spacer bodies standing in for the rows above and
// below. A row element is reused until its row changes, so a change touches only its own row.
//
// Every value reaches the page as text through `safeText`: any JSON value (an object where a
// string was expected, an array, null, a number, a huge string, an object whose "toString" is not
// a function) becomes bounded text, and nothing here can throw on what a DSM sends.
"use strict";

const TEXT_LIMIT = 200;        // characters of one field drawn in a cell (the title holds more)
const TITLE_LIMIT = 2000;
const HISTORY_CHIPS = 10;      // the newest statuses drawn as chips; older ones are counted ("+N")
const DASH = "\u2014";
const KNOWN_STATES = new Set(["alive", "expired", "unannounced"]);
const hasOwn = (object, name) => Object.prototype.hasOwnProperty.call(object, name);

// Text for any value: strings as they are, numbers and booleans as JavaScript writes them,
// null/undefined as "", anything else as its JSON; at most `limit` characters (an ellipsis ends a
// cut). Never throws.
function safeText(value, limit) {
  const most = limit || TEXT_LIMIT;
  let text;
  if (typeof value === "string") {
    text = value;
  } else if (value === null || value === undefined) {
    text = "";
  } else if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") {
    text = String(value);
  } else {
    try {
      text = JSON.stringify(value);
    } catch (error) {
      text = undefined;  // too deep, or not JSON at all
    }
    if (typeof text !== "string") text = Object.prototype.toString.call(value);
  }
  return text.length > most ? text.slice(0, most - 1) + "\u2026" : text;
}

// The error's message as text, whatever was thrown.
function errorText(error) {
  if (error !== null && typeof error === "object" && typeof error.message === "string") {
    return safeText(error.message);
  }
  return safeText(error);
}

// object[name] when `object` is a JSON object with that key of its own, else undefined.
function field(object, name) {
  if (object === null || typeof object !== "object" || Array.isArray(object)) return undefined;
  return hasOwn(object, name) ? object[name] : undefined;
}

// A JSON object's own entries as a Map (anything else: an empty Map).
function recordMap(value) {
  const map = new Map();
  if (value === null || typeof value !== "object" || Array.isArray(value)) return map;
  for (const key of Object.keys(value)) map.set(key, value[key]);
  return map;
}

// The filter's status class, from the colour meaning (status_colours.js): pass (PASS/OK, 000
// stopped cleanly), fail (FAIL/ERROR, 01X, 2XX, 3XX), running (any other status) or none.
const FAILING = new Set(["fail", "script-failure", "client-trouble", "dsm-trouble"]);
function statusClass(statusText) {
  if (statusText === undefined || statusText.trim() === "") return "none";
  const meaning = statusMeaning(statusText);
  if (meaning === "pass" || meaning === "stopped") return "pass";
  return FAILING.has(meaning) ? "fail" : "running";
}

// One history entry ({"time_stamp", "status"}; anything else is taken as the status itself).
function historyEntry(entry) {
  const isObject = entry !== null && typeof entry === "object" && !Array.isArray(entry);
  const status = safeText(isObject ? field(entry, "status") : entry, TITLE_LIMIT);
  const stamp = isObject ? safeText(field(entry, "time_stamp")) : "";
  return {status: status, stamp: stamp, meaning: statusMeaning(status)};
}

function addressLines(drive) {
  const interfaces = field(drive, "network_interfaces");
  if (!Array.isArray(interfaces)) return [];
  const lines = [];
  for (const iface of interfaces) {
    if (iface === null || typeof iface !== "object" || Array.isArray(iface)) continue;
    const name = safeText(field(iface, "name"), 40);
    const address = safeText(field(iface, "ipv4_addr"), 60);
    lines.push((name ? name + " " : "") + (address || "no IPv4"));
    if (lines.length >= 8) break;
  }
  return lines;
}

function ago(epochSeconds, nowSeconds) {
  if (!Number.isFinite(epochSeconds)) return "";
  const seconds = Math.max(0, Math.round(nowSeconds - epochSeconds));
  if (seconds < 90) return seconds + " s ago";
  if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

// One DSM's data: serial -> drive object, serial -> status list, as its feed or API gave them.
class HostData {
  constructor() {
    this.drives = new Map();
    this.statuses = new Map();
  }

  serials() {
    const all = new Set(this.drives.keys());
    for (const serial of this.statuses.keys()) all.add(serial);
    return all;
  }
}

const SORTS = {
  // Each compares two rows; ties fall back to serial, then host.
  serial: () => 0,
  state: (a, b) => (a.state < b.state ? -1 : a.state > b.state ? 1 : 0),
  // Alive drives first (heard now), then the others by their last_seen_epoch, newest first.
  "last-seen": (a, b) => ((b.state === "alive") - (a.state === "alive")) ||
                         (b.lastSeenEpoch - a.lastSeenEpoch) || 0,
  status: (a, b) => STATUS_ORDER[a.statusClass] - STATUS_ORDER[b.statusClass],
  host: (a, b) => (a.host < b.host ? -1 : a.host > b.host ? 1 : 0),
};
const STATUS_ORDER = {fail: 0, running: 1, pass: 2, none: 3};

function compareRows(sort, a, b) {
  const first = (SORTS[sort] || SORTS.serial)(a, b);
  if (first) return first;
  if (a.serial !== b.serial) return a.serial < b.serial ? -1 : 1;
  return a.host < b.host ? -1 : a.host > b.host ? 1 : 0;
}

// Every row of every host, the filters and the sort, and the rows changed since the last flush.
class DriveRows {
  constructor() {
    this.hosts = new Map();       // host name ("" on this host's view) -> HostData
    this.unseen = new Map();      // host -> {drives, statuses}: a snapshot in parts under way
    this.rows = new Map();        // key -> row
    this.changed = new Set();     // keys changed since the last flush
    this.statesSeen = new Map();  // key -> the states seen in order (data-states-seen)
    this.order = [];              // the rows shown, filtered and sorted
    this.reorderAll = true;
    this.filters = {serial: "", host: "", state: "", status: ""};
    this.sort = "serial";
  }

  static key(host, serial) {
    return host + "\u0000" + serial;
  }

  hostData(host) {
    let data = this.hosts.get(host);
    if (!data) {
      data = new HostData();
      this.hosts.set(host, data);
    }
    return data;
  }

  // A snapshot: every row of `host` becomes what `drives` and `statuses` (whole JSON maps) say.
  replaceHost(host, drives, statuses) {
    this.unseen.delete(host);
    const data = this.hostData(host);
    const before = data.serials();
    data.drives = recordMap(drives);
    data.statuses = recordMap(statuses);
    for (const serial of data.serials()) before.add(serial);
    for (const serial of before) this.updateRow(host, serial);
  }

  // A snapshot in parts (docs/protocol.md): each part's rows are set at once; the rows no part
  // has named yet stay as they were until `endSnapshot` forgets those no part named at all. A
  // snapshot cut off part-way is simply never ended (a new `beginSnapshot` starts afresh).
  beginSnapshot(host) {
    const data = this.hostData(host);
    this.unseen.set(host, {drives: new Set(data.drives.keys()),
                           statuses: new Set(data.statuses.keys())});
  }

  applyPart(host, drives, statuses) {
    const data = this.hostData(host);
    const unseen = this.unseen.get(host) || {drives: new Set(), statuses: new Set()};
    const touched = new Set();
    for (const [serial, drive] of recordMap(drives)) {
      data.drives.set(serial, drive);
      unseen.drives.delete(serial);
      touched.add(serial);
    }
    for (const [serial, list] of recordMap(statuses)) {
      data.statuses.set(serial, list);
      unseen.statuses.delete(serial);
      touched.add(serial);
    }
    for (const serial of touched) this.updateRow(host, serial);
  }

  endSnapshot(host) {
    const unseen = this.unseen.get(host);
    if (!unseen) return;
    this.unseen.delete(host);
    const data = this.hostData(host);
    for (const serial of unseen.drives) data.drives.delete(serial);
    for (const serial of unseen.statuses) data.statuses.delete(serial);
    for (const serial of new Set([...unseen.drives, ...unseen.statuses])) {
      this.updateRow(host, serial);
    }
  }

  // A change event: `drives`/`statuses` map serial -> new value, or null for gone; `wipe` first
  // forgets every row of the host.
  applyChange(host, wipe, drives, statuses) {
    const data = this.hostData(host);
    const touched = wipe ? data.serials() : new Set();
    if (wipe) {
      data.drives.clear();
      data.statuses.clear();
    }
    for (const [serial, drive] of recordMap(drives)) {
      if (drive === null) data.drives.delete(serial);
      else data.drives.set(serial, drive);
      touched.add(serial);
    }
    for (const [serial, list] of recordMap(statuses)) {
      if (list === null) data.statuses.delete(serial);
      else data.statuses.set(serial, list);
      touched.add(serial);
    }
    for (const serial of touched) this.updateRow(host, serial);
  }

  // Marks every row of `host` (stale or not: the lab view greys a host whose feed dropped).
  touchHost(host) {
    const data = this.hosts.get(host);
    if (data) for (const serial of data.serials()) this.changed.add(DriveRows.key(host, serial));
  }

  updateRow(host, serial) {
    const key = DriveRows.key(host, serial);
    const data = this.hostData(host);
    const hasDrive = data.drives.has(serial);
    const hasStatuses = data.statuses.has(serial);
    this.changed.add(key);
    if (!hasDrive && !hasStatuses) {
      if (this.rows.delete(key)) this.statesSeen.delete(key);
      return;
    }
    const row = deriveRow(host, serial, hasDrive ? data.drives.get(serial) : undefined,
                          hasStatuses ? data.statuses.get(serial) : undefined);
    const seen = this.statesSeen.get(key) || [];
    if (seen[seen.length - 1] !== row.state) seen.push(row.state);
    if (seen.length > 20) seen.splice(0, seen.length - 20);
    this.statesSeen.set(key, seen);
    row.seen = seen.join(" ");
    this.rows.set(key, row);
  }

  setFilters(filters, sort) {
    this.filters = Object.assign({}, this.filters, filters);
    this.sort = sort || this.sort;
    this.reorderAll = true;
  }

  matches(row) {
    const f = this.filters;
    return (!f.serial || row.serialUpper.includes(f.serial.toUpperCase())) &&
           (!f.host || row.host === f.host) &&
           (!f.state || row.state === f.state) &&
           (!f.status || row.statusClass === f.status);
  }

  // Brings `order` up to date; returns the keys changed since the last flush.
  flush() {
    const changed = this.changed;
    this.changed = new Set();
    if (this.reorderAll || changed.size > 256) {
      const shown = [];
      for (const row of this.rows.values()) if (this.matches(row)) shown.push(row);
      shown.sort((a, b) => compareRows(this.sort, a, b));
      this.order = shown;
      this.reorderAll = false;
      return changed;
    }
    if (!changed.size) return changed;
    const order = this.order.filter((row) => !changed.has(row.key));
    for (const key of changed) {
      const row = this.rows.get(key);
      if (!row || !this.matches(row)) continue;
      let low = 0;
      let high = order.length;
      while (low < high) {
        const middle = (low + high) >> 1;
        if (compareRows(this.sort, order[middle], row) < 0) low = middle + 1;
        else high = middle;
      }
      order.splice(low, 0, row);
    }
    this.order = order;
    return changed;
  }

  // {rows, drives, alive, expired, unannounced, other} over every row of `host`.
  counts(host) {
    const counts = {rows: 0, drives: 0, alive: 0, expired: 0, unannounced: 0, other: 0};
    for (const row of this.rows.values()) {
      if (host !== undefined && row.host !== host) continue;
      counts.rows += 1;
      if (row.hasDrive) counts.drives += 1;
      if (row.state === "alive" || row.state === "expired" || row.state === "unannounced") {
        counts[row.state] += 1;
      } else {
        counts.other += 1;
      }
    }
    return counts;
  }
}

// What sorting, filtering and counting need, derived once per change; the rest of what a row
// shows (`rowView`) only when it is drawn, so a snapshot of 10,000 drives x 20 statuses costs
// 10,000 small objects, not 200,000 chips.
function deriveRow(host, serial, drive, history) {
  const hasDrive = drive !== undefined;
  const stateText = hasDrive ? safeText(field(drive, "state"), 40) : "unannounced";
  const state = KNOWN_STATES.has(stateText) ? stateText : (stateText || "unknown");
  const list = Array.isArray(history) ? history : (history === undefined ? [] : [history]);
  const latest = list.length ? historyEntry(list[list.length - 1]) : null;
  const epochField = field(drive, "last_seen_epoch");  // Number() of an object can throw
  return {
    key: DriveRows.key(host, serial),
    host: host,
    serial: serial,
    serialUpper: serial.toUpperCase(),
    hasDrive: hasDrive,
    drive: drive,
    history: list,
    state: state,
    stateClass: KNOWN_STATES.has(state) ? state : "other",
    lastSeenEpoch: typeof epochField === "number" ? epochField : -Infinity,
    latest: latest,
    statusClass: statusClass(latest ? latest.status : undefined),
    view: null,
    seen: "",
  };
}

// Everything a row shows, as text (kept on the row until its data changes).
function rowView(row) {
  if (row.view) return row.view;
  const chips = row.history.slice(-HISTORY_CHIPS).map(historyEntry);
  row.view = {
    serialText: safeText(row.serial),
    model: row.hasDrive ? (safeText(field(row.drive, "model")) || DASH) : DASH,
    addresses: row.hasDrive ? addressLines(row.drive) : [],
    lastSeen: row.hasDrive ? safeText(field(row.drive, "last_seen")) : "",
    chips: chips,
    earlier: row.history.length - chips.length,
  };
  return row.view;
}

function cell(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// The <tr> of one row. Cells hold one or two lines that never wrap, so every row has the same
// height (VirtualTable depends on it). `withHost` adds the lab view's host column first; `stale`
// greys the row (its DSM's feed dropped).
function rowElement(row, withHost, nowSeconds, stale) {
  const view = rowView(row);
  const tr = cell("tr", "row state-" + row.stateClass + (stale ? " stale" : ""));
  tr.dataset.serial = row.serial;
  tr.dataset.state = row.state;
  tr.dataset.statesSeen = row.seen;
  tr.dataset.statusClass = row.statusClass;
  if (withHost) {
    tr.dataset.host = row.host;
    tr.appendChild(cell("td", "host", safeText(row.host, 64)));
  }
  const serial = cell("td", "serial", view.serialText);
  serial.title = safeText(row.serial, TITLE_LIMIT);
  tr.appendChild(serial);
  const model = cell("td", "model", view.model);
  model.title = view.model;
  tr.appendChild(model);

  const addresses = cell("td", "addresses");
  const addressText = view.addresses.length ? view.addresses.join(", ") : DASH;
  addresses.appendChild(cell("div", "line", addressText));
  addresses.title = view.addresses.join("\n");
  tr.appendChild(addresses);

  const seen = cell("td", "last-seen");
  if (row.state === "alive") {
    // The feed sends a drive again when it changes, not each time it is heard (every few s):
    // its last_seen is that of its last change, and "alive" is what says it is heard now.
    seen.appendChild(cell("div", "line", "now"));
    seen.appendChild(cell("div", "line hint", view.lastSeen ? "changed " + view.lastSeen : ""));
  } else if (row.hasDrive) {
    seen.appendChild(cell("div", "line", view.lastSeen || DASH));
    seen.appendChild(cell("div", "line hint", ago(view.lastSeenEpoch, nowSeconds)));
  } else {
    seen.appendChild(cell("div", "line hint", "never announced"));
  }
  tr.appendChild(seen);

  const stateCell = cell("td", "state");
  stateCell.appendChild(cell("span", "badge badge-" + row.stateClass, row.state));
  tr.appendChild(stateCell);

  const latest = cell("td", "latest");
  if (row.latest) {
    const value = cell("div", "line status-value status-" + row.latest.meaning,
                       safeText(row.latest.status));
    value.dataset.meaning = row.latest.meaning;
    value.title = row.latest.status;
    latest.appendChild(value);
    latest.appendChild(cell("div", "line hint", row.latest.stamp));
  } else {
    latest.appendChild(cell("div", "line hint", "no status yet"));
  }
  tr.appendChild(latest);

  if (!withHost) {
    const timeline = cell("td", "timeline");
    const chips = cell("div", "chips");
    if (view.earlier > 0) chips.appendChild(cell("span", "earlier", "+" + view.earlier));
    for (const chip of view.chips) {
      const tick = cell("span", "tick status-" + chip.meaning, safeText(chip.status, 24));
      tick.dataset.meaning = chip.meaning;
      tick.title = chip.stamp + ": " + chip.status;
      chips.appendChild(tick);
    }
    timeline.appendChild(chips);
    tr.appendChild(timeline);
  }
  return tr;
}

// Draws `rows.order` into `body` (a <tbody>), only the rows in the scroller's view plus MARGIN,
// between the spacer bodies `above` and `below`.
class VirtualTable {
  constructor(scroller, above, body, below, draw) {
    this.scroller = scroller;
    this.above = above;
    this.below = below;
    this.body = body;
    this.draw = draw;                 // row -> <tr>
    this.rowHeight = 0;               // measured from the first row drawn
    this.drawn = new Map();           // key -> <tr> now in the body
    this.order = [];
    this.margin = 10;
    this.scroller.addEventListener("scroll", () => this.render(new Set()), {passive: true});
    window.addEventListener("resize", () => this.render(new Set()));
  }

  // Draws the rows in view of `order`; rows whose key is in `changed` are drawn anew.
  render(changed, order) {
    if (order) this.order = order;
    const height = this.rowHeight || 48;
    const total = this.order.length;
    const view = this.scroller.clientHeight || window.innerHeight;
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / height) - this.margin);
    const last = Math.min(total, Math.ceil((this.scroller.scrollTop + view) / height) + this.margin);
    const wanted = [];
    const next = new Map();
    for (let index = first; index < last; index += 1) {
      const row = this.order[index];
      let element = this.drawn.get(row.key);
      if (!element || changed.has(row.key)) element = this.drawSafely(row);
      next.set(row.key, element);
      wanted.push(element);
    }
    const current = this.body.children;
    let same = current.length === wanted.length;
    for (let index = 0; same && index < wanted.length; index += 1) {
      same = current[index] === wanted[index];
    }
    if (!same) this.body.replaceChildren(...wanted);
    this.drawn = next;
    this.setSpacer(this.above, first * height);
    this.setSpacer(this.below, (total - last) * height);
    if (!this.rowHeight && wanted.length) {
      const measured = wanted[0].getBoundingClientRect().height;
      if (measured > 0) {
        this.rowHeight = measured;
        this.render(new Set());
      }
    }
  }

  drawSafely(row) {
    let element;
    try {
      element = this.draw(row);
    } catch (error) {
      // Never expected (every field goes through safeText), but one row must not stop the rest.
      element = cell("tr", "row");
      element.dataset.serial = row.serial;
      element.appendChild(cell("td", "hint", "cannot draw this row: " + errorText(error)));
    }
    return element;
  }

  setSpacer(spacer, pixels) {
    const value = Math.round(pixels) + "px";
    let row = spacer.firstElementChild;
    if (!row) {
      row = document.createElement("tr");
      row.className = "spacer";
      row.appendChild(document.createElement("td"));
      spacer.appendChild(row);
    }
    if (row.style.height !== value) row.style.height = value;
    row.hidden = pixels <= 0;
  }
}

// Follows one DSM's change feed (GET /api/events, server-sent events; docs/protocol.md): a
// snapshot, then changes; resumes with the last event id after a drop (the browser sends it as
// Last-Event-ID; after a close this code passes it as ?since=); starts over without it on
// "resync". Where a stream cannot be opened (no EventSource, or the endpoint missing on an older
// DSM, or refused) it polls /api/drives and /api/status every POLL_MS and tries the feed again
// every FEED_RETRY_MS. Every callback is guarded: nothing one DSM sends stops another's feed.
//
// It asks for the snapshot in parts (?parts=1: snapshot-start, snapshot-part..., snapshot-end;
// an older DSM ignores it and sends one `snapshot`). Events are queued as they arrive (the browser
// may hand over many in one task) and parsed and applied in order, SLICE_MS at a time, yielding to
// the browser (setTimeout) between slices: a part is bounded, so is each JSON.parse; the first
// part's rows are drawn at once, and no task holds the main thread for the whole snapshot.
//
// handlers: snapshot(drives, statuses), change(wipe, drives, statuses),
//           snapshotBegin(), snapshotPart(drives, statuses), snapshotEnd(),
//           status(state, detail): state "live" | "polling" | "down"
const SLICE_MS = 8;
const POLL_MS = 2000;
const RETRY_MS = 2000;
const FEED_RETRY_MS = 30000;
const FETCH_TIMEOUT_MS = 5000;

class DriveFeed {
  constructor(baseUrl, handlers) {
    this.base = baseUrl;
    this.handlers = handlers;
    this.lastId = null;
    this.source = null;
    this.timer = null;
    this.mode = "connecting";
    this.feedTriedAt = 0;
    this.events = 0;
    this.inbox = [];        // events not applied yet, in order: [kind, JSON text, id]
    this.draining = false;  // a slice of the inbox is scheduled
    this.partial = null;    // the snapshot in parts being received: {epoch, rev, parts, got}
  }

  start() {
    if (typeof EventSource !== "function") {
      this.poll();
      return;
    }
    this.open();
  }

  open() {
    this.closeSource();
    this.feedTriedAt = Date.now();
    const query = "?parts=1" + (this.lastId ? "&since=" + encodeURIComponent(this.lastId) : "");
    let source;
    try {
      source = new EventSource(this.base + "/api/events" + query);
    } catch (error) {
      this.report("down", "cannot open the change feed: " + errorText(error));
      this.later(() => this.open(), RETRY_MS);
      return;
    }
    this.source = source;
    let heard = false;
    const take = (kind) => (event) => {
      if (this.source !== source) return;
      heard = true;
      this.receive(kind, event);
    };
    source.addEventListener("snapshot", take("snapshot"));
    for (const kind of ["snapshot-start", "snapshot-part", "snapshot-end"]) {
      source.addEventListener(kind, take(kind));
    }
    source.addEventListener("change", take("change"));
    source.addEventListener("resync", take("resync"));
    source.onerror = () => {
      if (this.source !== source) return;
      if (source.readyState === 2 /* CLOSED */) {
        // Not a stream (an older DSM's 404, a 503, another content type): poll, and see
        // whether the DSM answers at all.
        this.closeSource();
        this.poll(heard ? null : "no change feed");
      } else {
        // The browser reconnects by itself, with Last-Event-ID.
        this.report("down", "the change feed dropped; reconnecting");
      }
    };
  }

  receive(kind, event) {
    if (kind === "resync") {
      this.lastId = null;
      this.partial = null;
      this.later(() => this.open(), 0);
      return;
    }
    this.stopTimer();
    this.mode = "live";
    this.inbox.push([kind, event.data, event.lastEventId]);
    if (!this.draining) this.drain();
    if (this.mode === "live") this.report("live", "");
  }

  // A broken event: start over with a snapshot rather than guess (what is queued after it came
  // from the same stream: dropped).
  startOver() {
    this.lastId = null;
    this.partial = null;
    this.inbox = [];
    this.mode = "connecting";
    this.report("down", "the change feed sent an unreadable event; starting over");
    this.closeSource();
    this.later(() => this.open(), RETRY_MS);
  }

  // Whether a snapshot's parts come as announced: same epoch and rev, numbered 1..parts.
  inSequence(kind, data) {
    const partial = this.partial;
    if (kind === "snapshot-start") {
      this.partial = {epoch: field(data, "epoch"), rev: field(data, "rev"),
                      parts: field(data, "parts"), got: 0};
      return true;
    }
    if (kind !== "snapshot-part" && kind !== "snapshot-end") return true;
    if (!partial || field(data, "epoch") !== partial.epoch || field(data, "rev") !== partial.rev) {
      return false;
    }
    if (kind === "snapshot-part") {
      partial.got += 1;
      return field(data, "part") === partial.got;
    }
    this.partial = null;
    return partial.got === partial.parts && field(data, "parts") === partial.parts;
  }

  // Parses and applies queued events in order until SLICE_MS has passed, then yields.
  drain() {
    this.draining = false;
    const started = performance.now();
    const inbox = this.inbox;
    let next = 0;
    while (next < inbox.length) {
      const [kind, text, id] = inbox[next];
      next += 1;
      let data;
      try {
        data = JSON.parse(text);
        if (!this.inSequence(kind, data)) throw new Error("snapshot part out of sequence");
      } catch (error) {
        this.startOver();
        return;
      }
      this.events += 1;
      if (typeof id === "string" && id) this.lastId = id;
      this.guard(() => this.apply(kind, data));
      if (next < inbox.length && performance.now() - started >= SLICE_MS) {
        this.draining = true;
        setTimeout(() => this.drain(), 0);
        break;
      }
    }
    inbox.splice(0, next);
  }

  apply(kind, data) {
    const handlers = this.handlers;
    if (kind === "snapshot") {
      handlers.snapshot(field(data, "drives"), field(data, "status"));
    } else if (kind === "snapshot-start") {
      handlers.snapshotBegin();
    } else if (kind === "snapshot-part") {
      handlers.snapshotPart(field(data, "drives"), field(data, "status"));
    } else if (kind === "snapshot-end") {
      handlers.snapshotEnd();
    } else {
      handlers.change(field(data, "wipe") === true, field(data, "drives"), field(data, "status"));
    }
  }

  async poll(why) {
    this.stopTimer();
    try {
      const [drives, statuses] = await Promise.all([this.fetchJson("/api/drives"),
                                                    this.fetchJson("/api/status")]);
      this.guard(() => this.handlers.snapshot(drives, statuses));
      this.mode = "polling";
      this.report("polling", why || "");
    } catch (error) {
      this.report("down", errorText(error));
    }
    const feedDue = typeof EventSource === "function" &&
                    (this.mode !== "polling" || Date.now() - this.feedTriedAt >= FEED_RETRY_MS);
    this.later(() => (feedDue ? this.open() : this.poll(why)), POLL_MS);
  }

  async fetchJson(path) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(this.base + path, {cache: "no-cache", mode: "cors",
                                                      signal: controller.signal});
      if (!response.ok) throw new Error(path + " answered HTTP " + response.status);
      return await response.json();
    } catch (error) {
      if (error && error.name === "AbortError") {
        throw new Error(path + ": no answer within " + FETCH_TIMEOUT_MS / 1000 + " s");
      }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  guard(callback) {
    try {
      callback();
    } catch (error) {
      this.report("down", "the page could not apply the data: " + errorText(error));
    }
  }

  report(state, detail) {
    try {
      this.handlers.status(state, detail);
    } catch (error) {
      // The status display itself failed: nothing more to say, and the feed goes on.
    }
  }

  later(callback, delay) {
    this.stopTimer();
    this.timer = setTimeout(() => {
      this.timer = null;
      callback();
    }, delay);
  }

  stopTimer() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  closeSource() {
    if (this.source) this.source.close();
    this.source = null;
  }
}

// A DriveFeed's handlers that keep `host`'s rows in `rows`, calling `changed()` after each update
// and `status(state, detail)` on the feed's state.
function rowsFeedHandlers(rows, host, changed, status) {
  const then = (update) => (...args) => {
    update(...args);
    changed();
  };
  return {
    snapshot: then((drives, statuses) => rows.replaceHost(host, drives, statuses)),
    snapshotBegin: then(() => rows.beginSnapshot(host)),
    snapshotPart: then((drives, statuses) => rows.applyPart(host, drives, statuses)),
    snapshotEnd: then(() => rows.endSnapshot(host)),
    change: then((wipe, drives, statuses) => rows.applyChange(host, wipe, drives, statuses)),
    status,
  };
}

// Calls `callback` once per frame at most, also where frames do not run (a hidden tab).
function frameScheduler(callback) {
  let pending = false;
  const run = () => {
    if (!pending) return;
    pending = false;
    callback();
  };
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(run);
    setTimeout(run, 250);
  };
}
