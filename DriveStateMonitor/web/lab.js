// The whole-lab view: when this DSM was started with --lab FILE, /api/lab lists the lab's DSMs and
// the page offers "This host / Whole lab". In the lab view the browser polls every DSM's
// /api/drives and /api/status itself (their JSON API allows any origin; this page's
// Content-Security-Policy allows exactly those origins), merges them with a host column and
// filters, and shows one banner per DSM that does not answer while the others stay on screen.
// app.js keeps drawing this host's table; this file only hides it while the lab view is shown.
// Drive fields come from the network: they reach the page as text only (textContent).
"use strict";

(() => {
  const LAB_POLL_MS = 2000;
  const LAB_TIMEOUT_MS = 5000;
  // name -> {url, drives, statuses, error, failingSince, answered}
  const labHosts = new Map();
  let labPolling = false;

  function node(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined && text !== null) element.textContent = String(text);
    return element;
  }

  async function fetchFrom(url) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), LAB_TIMEOUT_MS);
    try {
      const response = await fetch(url, {cache: "no-store", mode: "cors", signal: controller.signal});
      if (!response.ok) throw new Error("HTTP " + response.status);
      return await response.json();
    } catch (error) {
      throw new Error(error.name === "AbortError" ? "no answer within " + LAB_TIMEOUT_MS / 1000 +
                      " s" : (error.message || String(error)));
    } finally {
      clearTimeout(timer);
    }
  }

  // Each DSM has its own poll loop, so a slow or dead one never holds up the others.
  async function pollHost(name) {
    const host = labHosts.get(name);
    try {
      const [drives, statuses] = await Promise.all([fetchFrom(host.url + "/api/drives"),
                                                    fetchFrom(host.url + "/api/status")]);
      host.drives = drives;
      host.statuses = statuses;
      host.error = null;
      host.failingSince = null;
      host.answered = true;
    } catch (error) {
      host.error = error.message;
      if (host.failingSince === null) host.failingSince = new Date();
    }
    renderLab();
    setTimeout(() => pollHost(name), LAB_POLL_MS);
  }

  // The filter's status class, from the colour meaning (status_colours.js): pass (PASS/OK, 000
  // stopped cleanly), fail (FAIL/ERROR, 01X, 2XX, 3XX), running (any other status) or none.
  const FAILING = new Set(["fail", "script-failure", "client-trouble", "dsm-trouble"]);
  function statusClass(status) {
    if (status === undefined || status === null || String(status).trim() === "") return "none";
    const meaning = statusMeaning(status);
    if (meaning === "pass" || meaning === "stopped") return "pass";
    return FAILING.has(meaning) ? "fail" : "running";
  }

  function labRows() {
    const rows = [];
    for (const [name, host] of labHosts) {
      if (!host.answered) continue;
      const drives = host.drives || {};
      const statuses = host.statuses || {};
      const serials = new Set(Object.keys(drives).concat(Object.keys(statuses)));
      for (const serial of serials) {
        const history = Array.isArray(statuses[serial]) ? statuses[serial] : [];
        rows.push({host: name, serial: serial, drive: drives[serial] || null,
                   latest: history.length ? history[history.length - 1] : null,
                   stale: host.error !== null});
      }
    }
    rows.sort((a, b) => (a.serial < b.serial ? -1 : a.serial > b.serial ? 1 : 0));
    return rows;
  }

  function matches(row, filters) {
    const state = row.drive ? row.drive.state : "unannounced";
    return (!filters.serial || row.serial.toUpperCase().includes(filters.serial.toUpperCase())) &&
           (!filters.host || row.host === filters.host) &&
           (!filters.state || state === filters.state) &&
           (!filters.status || statusClass(row.latest && row.latest.status) === filters.status);
  }

  function labRow(row) {
    const state = row.drive ? row.drive.state : "unannounced";
    const tr = node("tr", "state-" + state + (row.stale ? " stale" : ""));
    tr.dataset.host = row.host;
    tr.dataset.serial = row.serial;
    tr.dataset.state = state;
    tr.appendChild(node("td", "host", row.host));
    tr.appendChild(node("td", "serial", row.serial));
    tr.appendChild(node("td", null, row.drive ? (row.drive.model || "\u2014") : "\u2014"));
    const addressCell = node("td", "addresses");
    const interfaces = row.drive && Array.isArray(row.drive.network_interfaces)
      ? row.drive.network_interfaces.filter((iface) => iface && typeof iface === "object") : [];
    for (const iface of interfaces) {
      addressCell.appendChild(node("div", null, (iface.name ? iface.name + " " : "") +
                                                (iface.ipv4_addr || "no IPv4")));
    }
    if (!interfaces.length) addressCell.textContent = "\u2014";
    tr.appendChild(addressCell);
    tr.appendChild(node("td", "last-seen", row.drive ? row.drive.last_seen : "never announced"));
    const stateCell = node("td");
    stateCell.appendChild(node("span", "badge badge-" + state, state));
    tr.appendChild(stateCell);
    const latestCell = node("td", "latest");
    if (row.latest) {
      const kind = statusClass(row.latest.status);
      tr.dataset.statusClass = kind;
      latestCell.appendChild(node("div", "status-value status-" + statusMeaning(row.latest.status),
                                  row.latest.status));
      latestCell.appendChild(node("div", "hint", row.latest.time_stamp));
    } else {
      tr.dataset.statusClass = "none";
      latestCell.appendChild(node("span", "hint", "no status yet"));
    }
    tr.appendChild(latestCell);
    return tr;
  }

  function renderLab() {
    const banners = document.createDocumentFragment();
    for (const [name, host] of labHosts) {
      if (host.error === null) continue;
      const banner = node("p", "lab-banner", "The DSM " + name + " (" + host.url +
        ") does not answer since " + host.failingSince.toLocaleTimeString([], {hour12: false}) +
        " (" + host.error + "). " + (host.answered ? "Its last data is shown in grey; " : "") +
        "retrying every " + LAB_POLL_MS / 1000 + " s.");
      banner.dataset.host = name;
      banner.setAttribute("role", "alert");
      banners.appendChild(banner);
    }
    document.getElementById("lab-banners").replaceChildren(banners);

    const filters = {serial: document.getElementById("filter-serial").value.trim(),
                     host: document.getElementById("filter-host").value,
                     state: document.getElementById("filter-state").value,
                     status: document.getElementById("filter-status").value};
    const all = labRows();
    const shown = all.filter((row) => matches(row, filters));
    const body = document.createDocumentFragment();
    for (const row of shown) body.appendChild(labRow(row));
    document.getElementById("lab-rows").replaceChildren(body);
    const answering = [...labHosts.values()].filter((host) => host.error === null &&
                                                              host.answered).length;
    document.getElementById("lab-summary").textContent = shown.length + " of " + all.length +
      " rows \u00b7 " + answering + " of " + labHosts.size + " DSMs answering";
    document.body.dataset.labAnswering = String(answering);
  }

  function showView(view) {
    document.body.dataset.view = view;
    document.getElementById("view-host").setAttribute("aria-pressed", String(view === "host"));
    document.getElementById("view-lab").setAttribute("aria-pressed", String(view === "lab"));
    if (view === "lab" && !labPolling) {
      labPolling = true;
      for (const name of labHosts.keys()) pollHost(name);
    }
    renderLab();
  }

  async function start() {
    let lab;
    try {
      lab = await fetchFrom("/api/lab");
    } catch (error) {
      return;  // an older DSM, or this one unreachable: this host's view only
    }
    const hosts = Array.isArray(lab.hosts) ? lab.hosts : [];
    if (!hosts.length) return;
    const hostFilter = document.getElementById("filter-host");
    for (const host of hosts) {
      labHosts.set(String(host.name), {url: String(host.url), drives: null, statuses: null,
                                       error: null, failingSince: null, answered: false});
      hostFilter.appendChild(node("option", null, host.name));
    }
    document.getElementById("view-lab").textContent = "Whole lab (" + hosts.length + " DSMs)";
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
    form.addEventListener("input", renderLab);
    form.addEventListener("change", renderLab);
    showView(location.hash === "#lab" ? "lab" : "host");
  }

  start();
})();
