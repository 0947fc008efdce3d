// The live page, this host's view: follows the DSM's change feed (GET /api/events; polling
// /api/drives and /api/status only where a stream cannot be opened) and draws the rows in view
// (drive_rows.js: the rows, the virtual table, the feed client). Drive fields come from the
// network, so they only ever reach the page as text (textContent), never as HTML.
"use strict";

(() => {
  const HOST = "";  // this host's rows in DriveRows
  const AGO_REFRESH_MS = 10000;
  const rows = new DriveRows();
  let table = null;
  let unreachableSince = null;
  let updates = 0;

  // HH:MM:SS, local time (toLocaleTimeString costs a millisecond or more per call).
  function clock(date) {
    const two = (number) => (number < 10 ? "0" : "") + number;
    return two(date.getHours()) + ":" + two(date.getMinutes()) + ":" + two(date.getSeconds());
  }

  function setText(id, text) {
    const element = document.getElementById(id);
    if (element.textContent !== text) element.textContent = text;
  }

  function plural(count, one, many) {
    return count + " " + (count === 1 ? one : many);
  }

  const schedule = frameScheduler(() => {
    const changed = rows.flush();
    table.render(changed, rows.order);
    const counts = rows.counts(HOST);
    const empty = document.getElementById("empty");
    if (empty.hidden !== counts.rows > 0) empty.hidden = counts.rows > 0;
    // "drives" are the announced serials; an unannounced row has statuses only.
    setText("summary",
      plural(counts.drives, "drive", "drives") + ": " + counts.alive + " alive, " +
      counts.expired + " expired" + (counts.other ? ", " + counts.other + " in another state" : "") +
      " \u00b7 " + counts.unannounced + " unannounced \u00b7 updated " + clock(new Date()));
    setText("host-shown", rows.order.length === counts.rows ? plural(counts.rows, "row", "rows")
      : rows.order.length + " of " + plural(counts.rows, "row", "rows"));
    updates += 1;
    document.body.dataset.refreshes = String(updates);
    document.body.dataset.rows = String(counts.rows);
  });

  let shownStatus = "";
  function showStatus(state, detail) {
    // Called for every event: only a new state (or a new reason) touches the page.
    if (state + "\n" + detail === shownStatus && state !== "down") return;
    shownStatus = state + "\n" + detail;
    const banner = document.getElementById("banner");
    const mode = document.getElementById("feed-mode");
    if (state === "down") {
      if (unreachableSince === null) unreachableSince = new Date();
      document.body.dataset.connection = "unreachable";
      banner.textContent = "The DSM is unreachable since " + clock(unreachableSince) + " (" +
        safeText(detail) + "). The table shows the last data received; retrying every " +
        RETRY_MS / 1000 + " s.";
      banner.hidden = false;
      mode.textContent = "Reconnecting";
      return;
    }
    unreachableSince = null;
    document.body.dataset.connection = "ok";
    document.body.dataset.feed = state;
    banner.hidden = true;
    mode.textContent = state === "live" ? "Live: follows the change feed"
      : "Polled every " + POLL_MS / 1000 + " s (" + (safeText(detail) || "no change feed") + ")";
  }

  function readFilters() {
    rows.setFilters({serial: document.getElementById("host-filter-serial").value.trim(),
                     state: document.getElementById("host-filter-state").value,
                     status: document.getElementById("host-filter-status").value},
                    document.getElementById("host-sort").value);
    schedule();
  }

  function start() {
    renderStatusLegend(document.getElementById("legend"));
    table = new VirtualTable(document.getElementById("host-scroll"),
                             document.getElementById("drive-above"),
                             document.getElementById("drive-rows"),
                             document.getElementById("drive-below"),
                             (row) => rowElement(row, false, Date.now() / 1000));
    const form = document.getElementById("host-filters");
    form.addEventListener("submit", (event) => event.preventDefault());
    form.addEventListener("input", readFilters);
    form.addEventListener("change", readFilters);
    // "5 s ago" grows old: redraw the rows in view (only those) now and then.
    setInterval(() => table.render(new Set(table.drawn.keys())), AGO_REFRESH_MS);
    const feed = new DriveFeed("", rowsFeedHandlers(rows, HOST, schedule, showStatus));
    window.dsmHostFeed = feed;  // for a look from the console (and the browser tests)
    feed.start();
  }

  start();
})();
