// pypapo site: the one script (the Content-Security-Policy allows no other). Pages work without it;
// it adds the search box of the list pages and puts the URL the page was reached at into the
// install snippets. No request leaves the server: it loads the search shards (search-0.json ...
// search-f.json), beside this file, on the first use of the box.
(function () {
  "use strict";
  var script = document.currentScript;
  var here = script ? script.src : location.href;
  var placeholder = "http://localhost:3333/simple/";
  var SHARDS = 16;
  var SHOWN = 200; // results rendered at most (the count says how many match)

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
  var pageText = count.textContent;
  var navs = document.querySelectorAll(".pp-pages");
  // Matches from every page are rendered here, from the data (text only: the data is untrusted).
  var results = document.createElement("ul");
  results.className = "pp-list";
  results.id = "results";
  results.hidden = true;
  list.parentNode.insertBefore(results, list);
  var projects = null; // every project, once the shards are loaded
  var loading = null;

  function words(query) {
    return query.toLowerCase().split(/\s+/).filter(function (w) { return w.length > 0; });
  }

  function load() {
    if (loading) { return loading; }
    var urls = [];
    for (var k = 0; k < SHARDS; k++) { urls.push(new URL("search-" + k.toString(16) + ".json", here).href); }
    // All at once; the browser revalidates each (ETag) and gets 304 for the unchanged ones.
    loading = Promise.all(urls.map(function (u) {
      return fetch(u, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) { throw new Error(u + ": " + r.status); }
        return r.json();
      });
    })).then(function (docs) {
      var out = [];
      docs.forEach(function (doc) {
        // Each project is an array of doc.fields: name, summary, version, uploaded, releases, keywords.
        var f = doc.fields || [];
        var at = { name: f.indexOf("name"), summary: f.indexOf("summary"), version: f.indexOf("version"),
                   uploaded: f.indexOf("uploaded"), keywords: f.indexOf("keywords") };
        (doc.projects || []).forEach(function (p) {
          var e = { name: String(p[at.name]), summary: String(p[at.summary] || ""),
                    version: String(p[at.version] || ""), uploaded: String(p[at.uploaded] || ""),
                    keywords: Array.isArray(p[at.keywords]) ? p[at.keywords].map(String) : [] };
          e.text = [e.name, e.summary, e.version].concat(e.keywords).join(" ").toLowerCase();
          out.push(e);
        });
      });
      out.sort(function (a, b) {  // the list's order: newest upload first
        return a.uploaded < b.uploaded ? 1 : a.uploaded > b.uploaded ? -1 : (a.name < b.name ? 1 : -1);
      });
      projects = out;
      return out;
    });
    loading.catch(function () { loading = null; });  // try again on the next keystroke
    return loading;
  }

  function row(e) {
    var li = document.createElement("li");
    li.setAttribute("data-name", e.name);
    var a = document.createElement("a");
    a.className = "pp-name";
    a.href = encodeURIComponent(e.name) + "/";
    a.textContent = e.name;
    li.appendChild(a);
    li.appendChild(document.createTextNode(" "));
    var v = document.createElement("span");
    v.className = e.version ? "pp-version" : "pp-yanked";
    v.textContent = e.version || "yanked";
    li.appendChild(v);
    li.appendChild(document.createTextNode(" "));
    var t = document.createElement("time");
    t.setAttribute("datetime", e.uploaded);
    t.title = e.uploaded.slice(0, 16).replace("T", " ") + " UTC";
    t.textContent = e.uploaded.slice(0, 10);
    li.appendChild(t);
    if (e.summary) {
      var p = document.createElement("p");
      p.className = "pp-muted";
      p.textContent = e.summary;
      li.appendChild(p);
    }
    return li;
  }

  function showPage(on) {
    list.hidden = !on;
    results.hidden = on;
    for (var n = 0; n < navs.length; n++) { navs[n].hidden = !on; }
  }

  // Until the shards are in: the rows of this page, by their text.
  function filterPage(terms) {
    var shown = 0;
    for (var i = 0; i < list.children.length; i++) {
      var li = list.children[i];
      var match = terms.every(function (t) { return li.textContent.toLowerCase().indexOf(t) !== -1; });
      li.hidden = !match;
      if (match) { shown++; }
    }
    count.textContent = shown + " on this page match (searching every project\u2026)";
  }

  function render(terms) {
    var matches = projects.filter(function (e) {
      return terms.every(function (t) { return e.text.indexOf(t) !== -1; });
    });
    var frag = document.createDocumentFragment();
    matches.slice(0, SHOWN).forEach(function (e) { frag.appendChild(row(e)); });
    results.textContent = "";
    results.appendChild(frag);
    showPage(false);
    count.textContent = matches.length + " of " + projects.length + " projects match" +
      (matches.length > SHOWN ? " (the newest " + SHOWN + " shown)" : "");
  }

  function apply() {
    var terms = words(input.value);
    var url = new URL(location.href);
    if (input.value) { url.searchParams.set("q", input.value); } else { url.searchParams.delete("q"); }
    history.replaceState(null, "", url.href);
    if (!terms.length) {
      for (var i = 0; i < list.children.length; i++) { list.children[i].hidden = false; }
      showPage(true);
      count.textContent = pageText;
      return;
    }
    if (projects) { render(terms); return; }
    filterPage(terms);
    load().then(function () {
      var now = words(input.value);
      if (now.length) { render(now); }
    }).catch(function () {
      count.textContent = "Search is unavailable (the search index did not load); this page's rows are filtered.";
    });
  }

  function firstShown() {
    var from = results.hidden ? list : results;
    for (var i = 0; i < from.children.length; i++) {
      if (!from.children[i].hidden) { return from.children[i].querySelector("a"); }
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
})();
