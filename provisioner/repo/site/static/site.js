// pypapo site: the one script (the Content-Security-Policy allows no other). Pages work without it;
// it adds the search box of the list page and puts the URL the page was reached at into the
// install snippets. No request leaves the server: it loads projects.json, beside this file.
(function () {
  "use strict";
  var script = document.currentScript;
  var here = script ? script.src : location.href;
  var placeholder = "http://localhost:3333/simple/";

  // Install snippets: the index as this browser reaches it (tunnel port, path prefix).
  var index = new URL("../simple/", here).href;
  if (index.indexOf("http") === 0) {
    var codes = document.querySelectorAll("code[data-index-url]");
    for (var i = 0; i < codes.length; i++) {
      codes[i].textContent = codes[i].textContent.split(placeholder).join(index);
    }
  }

  var box = document.querySelector(".pp-search");
  var input = document.getElementById("q");
  var list = document.getElementById("projects");
  var count = document.getElementById("count");
  if (!box || !input || !list || !count) {
    return;
  }
  var rows = list.children;
  var total = rows.length;
  var haystack = {};

  function words(query) {
    return query.toLowerCase().split(/\s+/).filter(function (w) { return w.length > 0; });
  }

  function apply() {
    var terms = words(input.value);
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i];
      var text = haystack[row.id] || row.textContent.toLowerCase();
      var match = terms.every(function (t) { return text.indexOf(t) !== -1; });
      row.hidden = !match;
      if (match) { shown++; }
    }
    count.textContent = terms.length
      ? shown + " of " + total + " projects match"
      : total + (total === 1 ? " project" : " projects") + ", newest upload first.";
    var url = new URL(location.href);
    if (input.value) { url.searchParams.set("q", input.value); } else { url.searchParams.delete("q"); }
    history.replaceState(null, "", url.href);
  }

  function firstShown() {
    for (var i = 0; i < rows.length; i++) {
      if (!rows[i].hidden) { return rows[i].querySelector("a"); }
    }
    return null;
  }

  box.hidden = false;
  input.value = new URL(location.href).searchParams.get("q") || "";
  input.addEventListener("input", apply);
  input.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") {
      var a = firstShown();
      if (a) { ev.preventDefault(); a.click(); }
    } else if (ev.key === "Escape") {
      input.value = "";
      apply();
    }
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "/" && document.activeElement !== input) {
      ev.preventDefault();
      input.focus();
    }
  });
  if (input.value) { apply(); }

  // Summaries and keywords from the search index: matches on more than the visible text.
  fetch(new URL("projects.json", here).href, { credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.json() : { projects: [] }; })
    .then(function (doc) {
      // Each project is an array of doc.fields: name, summary, version, uploaded, releases, keywords.
      var f = doc.fields || [];
      var at = function (p, key) { return p[f.indexOf(key)]; };
      (doc.projects || []).forEach(function (p) {
        var words = [at(p, "name"), at(p, "summary"), at(p, "version")].concat(at(p, "keywords") || []);
        haystack["p-" + at(p, "name")] = words.join(" ").toLowerCase();
      });
      if (input.value) { apply(); }
    })
    .catch(function () { /* the visible text still filters */ });
})();
