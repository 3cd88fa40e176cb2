"""The HTML leaderboard's only script, inlined in the page (no network, no external assets): click a header of a
`table.sortable` to sort its rows (again to reverse), type in an `input.filter` to hide the rows of its table
(`data-table`: the table's id) that do not hold every typed word.

A column sorts by number when every cell that is not "—" starts with one ("0.612 ± 0.030", "+0.143 [...]", "> 200",
"≤ 20"), else by text; cells without a number sort after those with one.
"""

SCRIPT = r"""
(function () {
  "use strict";
  var NUMBER = /^\s*[\u2264\u2265<>~]?\s*([-+\u2212]?\d*\.?\d+(?:e[-+]?\d+)?)/i;
  function number(text) {
    var m = NUMBER.exec(text);
    return m ? parseFloat(m[1].replace("\u2212", "-")) : null;
  }
  function numeric(rows, column) {
    return rows.every(function (row) {
      var text = row.cells[column].textContent.trim();
      return text === "" || text === "\u2014" || number(text) !== null;
    });
  }
  function compare(a, b, byNumber) {
    if (byNumber) {
      var x = number(a), y = number(b);
      if (x !== null && y !== null) { return x - y; }
      if (x !== null || y !== null) { return x !== null ? -1 : 1; }
    }
    return a.localeCompare(b);
  }
  function sortBy(table, th, column) {
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var byNumber = numeric(rows, column);
    rows.sort(function (r, s) {
      var order = compare(r.cells[column].textContent.trim(), s.cells[column].textContent.trim(), byNumber);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.title = "sort by this column";
      while (th.firstChild) { button.appendChild(th.firstChild); }
      th.appendChild(button);
      button.addEventListener("click", function () { sortBy(table, th, column); });
    });
  });
  document.querySelectorAll("input.filter").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    var count = document.getElementById(input.getAttribute("data-table") + "-count");
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      var shown = 0;
      rows.forEach(function (row) {
        var text = row.textContent.toLowerCase();
        row.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
        if (!row.hidden) { shown += 1; }
      });
      if (count) { count.textContent = words.length ? shown + " of " + rows.length + " rows" : ""; }
    });
  });
})();
"""
