// The whole-lab view: when this DSM was started with --lab FILE, /api/lab lists the lab's DSMs and
// the page offers "This host / Whole lab". In the lab view the browser follows every DSM's change
// feed itself (GET <dsm>/api/events; their API allows any origin and this page's
// Content-Security-Policy allows exactly those origins), one DriveFeed per DSM (drive_rows.js:
// polling where a DSM has no feed), merges the rows with a host column, filters and sorts them,
// and draws the rows in view. A DSM whose feed drops gets a banner and its rows turn grey while the
// others keep updating; its feed resumes from its last event id when it is back. Nothing one DSM
// sends or fails at stops another's feed. Drive fields reach the page as text only (textContent).
"use strict";

(() => {
  // name -> {url, state: "connecting" | "live" | "polling" | "down", detail, failingSince, answered}
  const labHosts = new Map();
  const rows = new DriveRows();
  let table = null;
  let following = false;

  function node(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function clock(date) {
    return date.toLocaleTimeString([], {hour12: false});
  }

  function renderBanners() {
    const banners = document.createDocumentFragment();
    for (const [name, host] of labHosts) {
      if (host.state !== "down") continue;
      const banner = node("p", "lab-banner", "The DSM " + safeText(name, 64) + " (" +
        safeText(host.url, 200) + ") does not answer since " + clock(host.failingSince) + " (" +
        safeText(host.detail) + "). " + (host.answered ? "Its last data is shown in grey; " : "") +
        "retrying every " + RETRY_MS / 1000 + " s.");
      banner.dataset.host = name;
      banner.setAttribute("role", "alert");
      banners.appendChild(banner);
    }
    document.getElementById("lab-banners").replaceChildren(banners);
  }

  const schedule = frameScheduler(() => {
    const changed = rows.flush();
    table.render(changed, rows.order);
    const answering = [...labHosts.values()].filter((host) => host.state === "live" ||
                                                              host.state === "polling").length;
    const total = rows.counts().rows;
    document.getElementById("lab-summary").textContent = rows.order.length + " of " + total +
      " rows \u00b7 " + answering + " of " + labHosts.size + " DSMs answering";
    document.body.dataset.labAnswering = String(answering);
    document.body.dataset.labRows = String(total);
  });

  function hostStatus(name, state, detail) {
    const host = labHosts.get(name);
    const wasDown = host.state === "down";
    if (state === "down") {
      if (!wasDown) host.failingSince = new Date();
    } else {
      host.answered = true;
    }
    host.state = state;
    host.detail = detail;
    if (wasDown !== (state === "down")) rows.touchHost(name);  // grey, or no longer
    renderBanners();
    schedule();
  }

  function follow(name) {
    const host = labHosts.get(name);
    const feed = new DriveFeed(host.url, rowsFeedHandlers(
      rows, name, schedule, (state, detail) => hostStatus(name, state, detail)));
    host.feed = feed;
    try {
      feed.start();
    } catch (error) {
      hostStatus(name, "down", errorText(error));
    }
  }

  function readFilters() {
    rows.setFilters({serial: document.getElementById("filter-serial").value.trim(),
                     host: document.getElementById("filter-host").value,
                     state: document.getElementById("filter-state").value,
                     status: document.getElementById("filter-status").value},
                    document.getElementById("lab-sort").value);
    schedule();
  }

  function showView(view) {
    document.body.dataset.view = view;
    document.getElementById("view-host").setAttribute("aria-pressed", String(view === "host"));
    document.getElementById("view-lab").setAttribute("aria-pressed", String(view === "lab"));
    if (view === "lab" && !following) {
      following = true;
      for (const name of labHosts.keys()) follow(name);
    }
    schedule();
  }

  async function start() {
    let lab;
    try {
      const response = await fetch("/api/lab", {cache: "no-cache"});
      if (!response.ok) return;  // an older DSM: this host's view only
      lab = await response.json();
    } catch (error) {
      return;  // this DSM unreachable: this host's view only
    }
    const hosts = Array.isArray(field(lab, "hosts")) ? field(lab, "hosts") : [];
    const hostFilter = document.getElementById("filter-host");
    for (const host of hosts) {
      const name = safeText(field(host, "name"), 64);
      const url = field(host, "url");
      if (!name || typeof url !== "string" || labHosts.has(name)) continue;
      labHosts.set(name, {url: url.replace(/\/+$/, ""), state: "connecting", detail: "",
                          failingSince: null, answered: false, feed: null});
      hostFilter.appendChild(node("option", null, name));
    }
    if (!labHosts.size) return;  // no lab: no switch
    table = new VirtualTable(document.getElementById("lab-scroll"),
                             document.getElementById("lab-above"),
                             document.getElementById("lab-rows"),
                             document.getElementById("lab-below"),
                             (row) => rowElement(row, true, Date.now() / 1000,
                                                 (labHosts.get(row.host) || {}).state === "down"));
    document.getElementById("view-lab").textContent = "Whole lab (" + labHosts.size + " DSMs)";
    document.getElementById("view-switch").hidden = false;
    document.getElementById("view-host").addEventListener("click", () => {
      history.replaceState(null, "", "#");
      showView("host");
    });
    document.getElementById("view-lab").addEventListener("click", () => {
      history.replaceState(null, "", "#lab");
      showView("lab");
    });
    const form = document.getElementById("lab-filters");
    form.addEventListener("submit", (event) => event.preventDefault());
    form.addEventListener("input", readFilters);
    form.addEventListener("change", readFilters);
    showView(location.hash === "#lab" ? "lab" : "host");
  }

  start();
})();
