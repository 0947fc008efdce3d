// The live page: polls /api/drives and /api/status every 2 s and redraws the table.
// Drive fields come from the network, so they only ever reach the page as text (textContent),
// never as HTML.
"use strict";

const POLL_MS = 2000;
// A poll that takes longer than this counts as "unreachable", so a hung DSM shows the banner too.
const TIMEOUT_MS = 5000;

let refreshes = 0;
let unreachableSince = null;
// serial -> the states this page has seen for it, in order ("alive expired"): lets anyone (and
// the browser test) see that the page followed a drive going silent.
const statesSeen = new Map();

async function fetchJson(path) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  try {
    const response = await fetch(path, {cache: "no-store", signal: controller.signal});
    if (!response.ok) {
      throw new Error(path + " answered HTTP " + response.status);
    }
    return await response.json();
  } finally {
    clearTimeout(timer);
  }
}

async function refresh() {
  try {
    const [drives, statuses] = await Promise.all([fetchJson("/api/drives"),
                                                  fetchJson("/api/status")]);
    render(drives, statuses);
    showReachable();
  } catch (error) {
    showUnreachable(error);
  } finally {
    // The next poll starts after this one ended: a slow DSM never gets overlapping polls.
    setTimeout(refresh, POLL_MS);
  }
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function clock(date) {
  return date.toLocaleTimeString([], {hour12: false});
}

function ago(epochSeconds) {
  const seconds = Math.max(0, Math.round(Date.now() / 1000 - epochSeconds));
  if (seconds < 90) return seconds + " s ago";
  if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

function addresses(drive) {
  const interfaces = Array.isArray(drive.network_interfaces) ? drive.network_interfaces : [];
  const lines = interfaces
    .filter((iface) => iface && typeof iface === "object")
    .map((iface) => (iface.name ? iface.name + " " : "") + (iface.ipv4_addr || "no IPv4"));
  return lines.length ? lines : ["\u2014"];
}

// Colours by meaning (status_colours.js): the lab's codes and words, anything else neutral.
function timeline(history) {
  const cell = el("td", "timeline");
  for (const entry of history) {
    const meaning = statusMeaning(entry.status);
    const tick = el("span", "tick status-" + meaning, entry.status);
    tick.dataset.meaning = meaning;
    tick.title = String(entry.time_stamp) + ": " + String(entry.status);
    cell.appendChild(tick);
  }
  return cell;
}

function noteState(serial, state) {
  const seen = statesSeen.get(serial) || [];
  if (seen[seen.length - 1] !== state) seen.push(state);
  statesSeen.set(serial, seen);
  return seen.join(" ");
}

function driveRow(serial, drive, history) {
  const row = el("tr");
  row.dataset.serial = serial;
  const state = drive ? drive.state : "unannounced";
  row.dataset.state = state;
  row.dataset.statesSeen = noteState(serial, state);
  row.className = "state-" + state;

  row.appendChild(el("td", "serial", serial));
  row.appendChild(el("td", null, drive ? (drive.model || "\u2014") : "\u2014"));
  const addressCell = el("td", "addresses");
  for (const line of drive ? addresses(drive) : ["\u2014"]) {
    addressCell.appendChild(el("div", null, line));
  }
  row.appendChild(addressCell);

  const seenCell = el("td", "last-seen");
  if (drive) {
    seenCell.appendChild(el("div", null, drive.last_seen));
    seenCell.appendChild(el("div", "hint", ago(drive.last_seen_epoch)));
  } else {
    seenCell.textContent = "never announced";
  }
  row.appendChild(seenCell);

  const stateCell = el("td");
  stateCell.appendChild(el("span", "badge badge-" + state, state));
  row.appendChild(stateCell);

  const latest = history.length ? history[history.length - 1] : null;
  const latestCell = el("td", "latest");
  if (latest) {
    const value = el("div", "status-value status-" + statusMeaning(latest.status), latest.status);
    value.dataset.meaning = statusMeaning(latest.status);
    latestCell.appendChild(value);
    latestCell.appendChild(el("div", "hint", latest.time_stamp));
  } else {
    latestCell.appendChild(el("span", "hint", "no status yet"));
  }
  row.appendChild(latestCell);
  row.appendChild(timeline(history));
  return row;
}

function render(drives, statuses) {
  const serials = Object.keys(drives);
  // Statuses for serials never announced are shown too: a script may report before its drive
  // is heard, or on a drive on another network.
  for (const serial of Object.keys(statuses)) {
    if (!(serial in drives)) serials.push(serial);
  }
  serials.sort();
  const rows = document.createDocumentFragment();
  for (const serial of serials) {
    const history = Array.isArray(statuses[serial]) ? statuses[serial] : [];
    rows.appendChild(driveRow(serial, drives[serial], history));
  }
  document.getElementById("drive-rows").replaceChildren(rows);
  document.getElementById("empty").hidden = serials.length > 0;

  const known = Object.keys(drives).length;
  const alive = Object.values(drives).filter((d) => d.state === "alive").length;
  document.getElementById("summary").textContent =
    known + (known === 1 ? " drive" : " drives") + ", " + alive + " alive, " +
    (known - alive) + " expired \u00b7 updated " + clock(new Date());
  refreshes += 1;
  document.body.dataset.refreshes = String(refreshes);
}

function showReachable() {
  unreachableSince = null;
  document.body.dataset.connection = "ok";
  document.getElementById("banner").hidden = true;
}

function showUnreachable(error) {
  if (unreachableSince === null) unreachableSince = new Date();
  document.body.dataset.connection = "unreachable";
  const banner = document.getElementById("banner");
  banner.textContent = "The DSM is unreachable since " + clock(unreachableSince) + " (" +
    (error && error.message ? error.message : error) + "). The table shows the last data " +
    "received; retrying every " + POLL_MS / 1000 + " s.";
  banner.hidden = false;
}

renderStatusLegend(document.getElementById("legend"));
refresh();
