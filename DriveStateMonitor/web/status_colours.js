// What a status means, for its colour on the live page (and in any other view: the function is
// plain and has no DOM in it). The lab's three-digit codes and a few words; anything else is
// "other", drawn in a neutral colour — never a colour that could be read as good or bad.
"use strict";

// In legend order: [meaning, legend text]. CSS draws each as .status-<meaning>.
const STATUS_MEANINGS = [
  ["pass", "PASS, OK"],
  ["stopped", "000 stopped cleanly"],
  ["initialised", "001 initialised"],
  ["started", "002 started"],
  ["dsm-trouble", "01X trouble reaching the DSM"],
  ["client-trouble", "2XX client trouble"],
  ["script-failure", "3XX script failure"],
  ["fail", "FAIL, ERROR"],
  ["other", "anything else"],
];

const STATUS_WORDS = {PASS: "pass", PASSED: "pass", OK: "pass",
                      FAIL: "fail", FAILED: "fail", ERROR: "fail"};

// statusMeaning("002") === "started"; statusMeaning(" fail ") === "fail"; statusMeaning("x") ===
// "other". Codes are exactly three digits; words are matched without regard to case; any other
// value (an object, null, ...) is "other".
function statusMeaning(status) {
  // Strings and numbers only: String() of an arbitrary JSON object can throw (a "toString" key).
  const text = (typeof status === "string" ? status
                : typeof status === "number" ? String(status) : "").trim();
  if (/^[0-9]{3}$/.test(text)) {
    if (text === "000") return "stopped";
    if (text === "001") return "initialised";
    if (text === "002") return "started";
    if (text[0] === "0" && text[1] === "1") return "dsm-trouble";
    if (text[0] === "2") return "client-trouble";
    if (text[0] === "3") return "script-failure";
    return "other";
  }
  return STATUS_WORDS[text.toUpperCase()] || "other";
}

// Fills `container` with one swatch per meaning.
function renderStatusLegend(container) {
  const items = document.createDocumentFragment();
  for (const [meaning, text] of STATUS_MEANINGS) {
    const item = document.createElement("span");
    item.className = "legend-item";
    const swatch = document.createElement("span");
    swatch.className = "tick status-" + meaning;
    swatch.textContent = "\u00a0";
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(text));
    items.appendChild(item);
  }
  container.replaceChildren(items);
}

if (typeof module !== "undefined") module.exports = {statusMeaning, STATUS_MEANINGS};
