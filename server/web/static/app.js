// vmatlas web view: every page is this one script over the JSON API (/api/v1/).
// No framework and no network beyond this server; the DOM is built with textContent
// only, so nothing from the API is ever parsed as HTML.
"use strict";

(function () {
  const API = "/api/v1";

  // Picture classes, in vmatlas.layout.PictureClass order.
  const CLASS_COLORS = {
    image: "#4e79a7", file: "#76b7b2", anonymous: "#f28e2b", heap: "#e15759",
    stack: "#59a14f", guard: "#9d9d9d", shared: "#b07aa1", named: "#edc948",
    pseudo: "#9c755f", reserved: "#c9dcf2", unusable: "#ff2d2d", free: "#ffffff",
  };
  const CLASS_LABELS = {
    image: "image", file: "file", anonymous: "anonymous", heap: "heap", stack: "stack",
    guard: "guard / PROT_NONE", shared: "shared memory / memfd", named: "named anonymous",
    pseudo: "kernel ([vdso] ...)", reserved: "reserved (Windows)",
    unusable: "unusable (64 KiB sliver)", free: "free",
  };
  const STATES = ["?", "free", "reserved", "committed"];

  // -- helpers ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function loginRedirect() {
    const next = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(next));
  }

  async function call(method, path) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") init.headers["X-Vmatlas-Request"] = "1";
    const response = await fetch(API + path, init);
    if (response.status === 401) { loginRedirect(); throw new ApiError(401, "log in first"); }
    let body;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.statusText;
      throw new ApiError(response.status, message);
    }
    return body;
  }
  const get = (path) => call("GET", path);
  const post = (path) => call("POST", path);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "style") el.style.cssText = v;  // CSSOM: allowed by the CSP, unlike markup
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const enc = encodeURIComponent;
  const intFmt = new Intl.NumberFormat("en-US");
  const fmtInt = (n) => (n === null || n === undefined ? "-" : intFmt.format(n));
  function fmtBytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let v = Math.abs(n), u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    const sign = n < 0 ? "-" : "";
    return sign + (u === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[u];
  }
  const fmtPct = (f) => (f === null || f === undefined ? "-" : (f * 100).toFixed(1) + "%");
  const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
  function fmtAgo(t) {
    const s = Math.max(0, Date.now() / 1000 - t);
    if (s < 90) return s.toFixed(0) + " s ago";
    if (s < 5400) return (s / 60).toFixed(0) + " min ago";
    if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
    return (s / 86400).toFixed(1) + " d ago";
  }
  function fmtDuration(s) {
    if (s >= 86400) return (s / 86400).toFixed(1) + " d";
    if (s >= 3600) return (s / 3600).toFixed(1) + " h";
    if (s >= 60) return (s / 60).toFixed(1) + " min";
    return s.toFixed(0) + " s";
  }
  const signed = (n, f) => (n > 0 ? "+" : "") + f(n);

  const hostHref = (host) => "/hosts/" + enc(host);
  const processHref = (host, pid) => hostHref(host) + "/processes/" + pid;

  function figure(label, value, attrs) {
    return h("div", Object.assign({ class: "figure" }, attrs || {}),
      h("div", { class: "value", text: value }), h("div", { class: "label", text: label }));
  }

  function crumbs(...items) {
    const nav = document.getElementById("crumbs");
    nav.replaceChildren(...items.map(([text, href]) =>
      href ? h("a", { href, text }) : h("span", { text })));
  }

  // Marks the page drawn: for the tests (data-loaded) and the benchmark (a performance
  // mark, timed from the navigation's start).
  function loaded(page) {
    document.body.dataset.loaded = page;
    performance.mark("vmatlas-loaded");
  }

  function showError(where, error) {
    where.append(h("p", { class: "error", text: error.message || String(error) }));
  }

  // A table whose columns sort on click. columns: {key, label, num, value(row), cell(row)}.
  function sortableTable(columns, rows, opts) {
    const state = { key: opts && opts.sortKey, desc: opts && opts.desc, filter: "" };
    const tbody = h("tbody");
    const heads = columns.map((c) => h("th", {
      class: "sortable" + (c.num ? " num" : ""), text: c.label, dataset: { key: c.key },
      onclick: () => {
        if (state.key === c.key) state.desc = !state.desc;
        else { state.key = c.key; state.desc = !!c.num; }
        render();
      },
    }));
    const table = h("table", opts && opts.attrs, h("thead", {}, h("tr", {}, heads)), tbody);
    function render() {
      let shown = rows;
      if (state.filter && opts && opts.filterValue) {
        const f = state.filter.toLowerCase();
        shown = rows.filter((r) => opts.filterValue(r).toLowerCase().includes(f));
      }
      if (state.members && opts && opts.memberKey) shown = shown.filter((r) => state.members.has(opts.memberKey(r)));
      const col = columns.find((c) => c.key === state.key);
      if (col) {
        const dir = state.desc ? -1 : 1;
        shown = shown.slice().sort((a, b) => {
          const x = col.value(a), y = col.value(b);
          return (x < y ? -1 : x > y ? 1 : 0) * dir;
        });
      }
      heads.forEach((th, i) => {
        th.classList.toggle("sorted-asc", columns[i].key === state.key && !state.desc);
        th.classList.toggle("sorted-desc", columns[i].key === state.key && !!state.desc);
      });
      tbody.replaceChildren(...shown.map((r) => h("tr", {},
        columns.map((c) => {
          const content = c.cell ? c.cell(r) : c.value(r);
          return h("td", { class: c.num ? "num" : c.cls || "" }, content);
        }))));
    }
    render();
    table.setFilter = (text) => { state.filter = text; render(); };
    table.setMembers = (keys) => { state.members = keys; render(); };
    return table;
  }

  // -- the fleet: / ----------------------------------------------------------------------

  async function fleetPage(main) {
    crumbs(["fleet"]);
    // Drawn first from two small reads; each host's worst process and the audit follow.
    const [hostList, closestList] = await Promise.all([
      get("/hosts"),
      get("/processes?order=headroom&limit=20"),
    ]);
    const hosts = hostList.hosts;
    const closest = closestList.processes;
    const sum = (f) => hosts.reduce((n, x) => n + f(x), 0);
    const worstFigure = figure("worst headroom", fmtPct(closest.length ? closest[0].summary.headroom_fraction : null));
    main.replaceChildren(
      h("h1", { text: "Fleet" }),
      h("div", { class: "figures", id: "fleet-figures" },
        figure("hosts", fmtInt(hosts.length)),
        figure("online", fmtInt(sum((x) => (x.online ? 1 : 0)))),
        figure("processes", fmtInt(sum((x) => x.process_count))),
        worstFigure,
        figure("critical findings", "…", { id: "critical-count" }),
        figure("warnings", "…", { id: "warning-count" })),
    );
    const hostColumns = [
      { key: "host", label: "host", value: (x) => x.host_id, cell: (x) => h("a", { href: hostHref(x.host_id), text: x.host_id }) },
      { key: "state", label: "state", value: (x) => (x.online ? 0 : 1), cell: (x) => h("span", { class: x.online ? "online" : "offline", text: x.online ? "online" : "offline" }) },
      { key: "os", label: "OS", value: (x) => x.os },
      { key: "limit", label: "max_map_count", num: true, value: (x) => x.max_map_count, cell: (x) => fmtInt(x.max_map_count) },
      { key: "procs", label: "processes", num: true, value: (x) => x.process_count, cell: (x) => fmtInt(x.process_count) },
      { key: "worst", label: "worst headroom", num: true, value: (x) => (x.worst_headroom_fraction === undefined || x.worst_headroom_fraction === null ? 2 : x.worst_headroom_fraction), cell: (x) => (x.worst_headroom_fraction === undefined ? "…" : fmtPct(x.worst_headroom_fraction)) },
      { key: "wproc", label: "in", value: (x) => x.worst_process || "", cell: (x) => (x.worst_pid ? h("a", { href: processHref(x.host_id, x.worst_pid), text: x.worst_process + " (" + x.worst_pid + ")" }) : "") },
      { key: "seen", label: "last seen", num: true, value: (x) => x.last_seen_time, cell: (x) => fmtAgo(x.last_seen_time) },
    ];
    let hostTable = sortableTable(hostColumns, hosts, { attrs: { id: "hosts" }, sortKey: "host" });
    const findings = h("div", { id: "findings" }, h("p", { class: "note", text: "auditing…" }));
    main.append(
      h("h2", { text: "Closest to their limit" }),
      sortableTable([
        { key: "host", label: "host", value: (p) => p.host_id, cell: (p) => h("a", { href: hostHref(p.host_id), text: p.host_id }) },
        { key: "pid", label: "pid", num: true, value: (p) => p.process.pid, cell: (p) => h("a", { href: processHref(p.host_id, p.process.pid), text: p.process.pid }) },
        { key: "name", label: "name", value: (p) => p.process.name },
        { key: "maps", label: "maps", num: true, value: (p) => p.summary.map_count, cell: (p) => fmtInt(p.summary.map_count) },
        { key: "limit", label: "limit", num: true, value: (p) => p.summary.max_map_count, cell: (p) => fmtInt(p.summary.max_map_count) },
        { key: "headroom", label: "headroom", num: true, value: (p) => p.summary.headroom_fraction, cell: (p) => fmtPct(p.summary.headroom_fraction) },
      ], closest, { attrs: { id: "closest" } }),
      h("h2", { text: "Hosts" }),
      hostTable,
      h("h2", { text: "Audit findings" }),
      findings,
    );
    loaded("fleet");
    const worst = get("/fleet?closest=0").then((fleet) => {
      const fresh = sortableTable(hostColumns, fleet.hosts, { attrs: { id: "hosts" }, sortKey: "worst" });
      hostTable.replaceWith(fresh);
      hostTable = fresh;
      document.body.dataset.worst = "1";
      performance.mark("vmatlas-worst");
    }).catch((e) => showError(hostTable.parentNode, e));
    try {
      const audit = await get("/audit");
      const count = (sev) => fmtInt(audit.findings.filter((f) => f.severity === sev).length);
      document.querySelector("#critical-count .value").textContent = count("critical");
      document.querySelector("#warning-count .value").textContent = count("warning");
      if (!audit.findings.length) {
        findings.replaceChildren(h("p", { class: "note", text: "no findings" }));
      } else {
        const order = { critical: 0, warning: 1, info: 2 };
        const rows = audit.findings.slice().sort((a, b) => (order[a.severity] ?? 3) - (order[b.severity] ?? 3));
        findings.replaceChildren(sortableTable([
          { key: "sev", label: "severity", value: (f) => order[f.severity] ?? 3, cell: (f) => h("span", { class: "sev-" + f.severity, text: f.severity }) },
          { key: "host", label: "host", value: (f) => f.host_id, cell: (f) => h("a", { href: hostHref(f.host_id), text: f.host_id }) },
          { key: "pid", label: "pid", num: true, value: (f) => f.pid, cell: (f) => (f.pid ? h("a", { href: processHref(f.host_id, f.pid), text: f.pid }) : "") },
          { key: "process", label: "process", value: (f) => f.process },
          { key: "check", label: "check", value: (f) => f.check },
          { key: "what", label: "what to do", value: (f) => f.message, cls: "path" },
        ], rows, { attrs: { id: "findings-table" } }));
      }
    } catch (e) {
      findings.replaceChildren();
      showError(findings, e);
    }
    await worst;
    document.body.dataset.complete = "1";
  }

  // -- one host: /hosts/{host} -------------------------------------------------------------

  async function hostPage(main, host) {
    crumbs(["fleet", "/"], [host]);
    const [status, list] = await Promise.all([
      get("/hosts/" + enc(host)),
      get("/processes?host=" + enc(host) + "&order=headroom"),
    ]);
    const processes = list.processes;
    main.replaceChildren(
      h("h1", {}, "Host ", h("span", { class: "mono", text: host })),
      h("div", { class: "figures" },
        figure("state", status.online ? "online" : "offline", { class: "figure " + (status.online ? "online" : "offline") }),
        figure("OS", status.os + (status.os_version ? " " + status.os_version : "")),
        figure("vm.max_map_count", fmtInt(status.max_map_count)),
        figure("processes", fmtInt(status.process_count)),
        figure("not readable", fmtInt(status.access_denied_count)),
        figure("last seen", fmtAgo(status.last_seen_time))),
    );
    const table = sortableTable([
      { key: "pid", label: "pid", num: true, value: (p) => p.process.pid, cell: (p) => h("a", { href: processHref(host, p.process.pid), text: p.process.pid }) },
      { key: "name", label: "name", value: (p) => p.process.name },
      { key: "user", label: "user", value: (p) => p.process.user },
      { key: "container", label: "container", value: (p) => p.process.container_id || "", cell: (p) => (p.process.container_id ? h("span", { class: "mono", title: p.process.container_id + (p.process.pod_uid ? " in pod " + p.process.pod_uid : ""), text: p.process.container_id.slice(0, 12) }) : "-") },
      { key: "maps", label: "maps", num: true, value: (p) => p.summary.map_count, cell: (p) => fmtInt(p.summary.map_count) },
      { key: "headroom", label: "headroom", num: true, value: (p) => p.summary.headroom_fraction, cell: (p) => fmtPct(p.summary.headroom_fraction) },
      { key: "committed", label: "committed", num: true, value: (p) => p.summary.committed_bytes, cell: (p) => fmtBytes(p.summary.committed_bytes) },
      { key: "reserved", label: "reserved", num: true, value: (p) => p.summary.reserved_bytes, cell: (p) => fmtBytes(p.summary.reserved_bytes) },
      { key: "seen", label: "captured", num: true, value: (p) => p.capture_time, cell: (p) => fmtAgo(p.capture_time) },
    ], processes, { attrs: { id: "processes" }, sortKey: "headroom", desc: false, filterValue: (p) => p.process.name, memberKey: (p) => p.process.pid });
    const filter = h("input", { type: "search", placeholder: "filter by name", id: "filter", oninput: (e) => table.setFilter(e.target.value) });
    const showing = h("span", { class: "note", id: "showing", text: processes.length + " processes; click a heading to sort" });
    // Groups: the metrics' groups (known applications, then pod, container or name), by
    // pod or container when the agent reports any, else by name.
    const by = processes.some((p) => p.process.pod_uid) ? "pod" : processes.some((p) => p.process.container_id) ? "container" : "name";
    const groupBy = h("select", { id: "group-by", onchange: () => showGroups(groupBy.value).catch((e) => showError(groupBox, e)) },
      ["pod", "container", "name"].map((v) => h("option", { value: v, text: "by " + v, selected: v === by })));
    const groupBox = h("div", { id: "groups-box" });
    const shortId = (name) => (/^[0-9a-f]{64}$/.test(name) ? name.slice(0, 12) : name);
    function showGroup(g) {
      table.setMembers(g ? new Set(g.pids) : null);
      showing.replaceChildren(...(g
        ? ["group " + shortId(g.name) + ": " + g.processes + (g.processes === 1 ? " process · " : " processes · "), h("a", { href: "#", id: "show-all", text: "show all", onclick: (e) => { e.preventDefault(); showGroup(null); } })]
        : [processes.length + " processes; click a heading to sort"]));
    }
    async function showGroups(key) {
      const doc = await get("/hosts/" + enc(host) + "/groups?by=" + key);
      showGroup(null);
      groupBox.replaceChildren(sortableTable([
        { key: "name", label: key, value: (g) => g.name, cell: (g) => h("a", { href: "#", text: shortId(g.name), title: g.name, onclick: (e) => { e.preventDefault(); showGroup(g); } }) },
        { key: "count", label: "processes", num: true, value: (g) => g.processes },
        { key: "maps", label: "maps", num: true, value: (g) => g.map_count, cell: (g) => fmtInt(g.map_count) },
        { key: "most", label: "most in one", num: true, value: (g) => g.map_count_max, cell: (g) => fmtInt(g.map_count_max) },
        { key: "ratio", label: "most of the limit", num: true, value: (g) => g.map_count_ratio_max, cell: (g) => (status.max_map_count ? fmtPct(g.map_count_ratio_max) : "-") },
        { key: "committed", label: "committed", num: true, value: (g) => g.committed_bytes, cell: (g) => fmtBytes(g.committed_bytes) },
      ], doc.groups, { attrs: { id: "groups", "data-by": key }, sortKey: "maps", desc: true }));
    }
    main.append(
      h("h2", { text: "Processes" }),
      h("div", { class: "toolbar" }, filter, showing),
      table,
      h("h2", {}, "Groups ", groupBy),
      groupBox,
    );
    await showGroups(by);
    loaded("host");
  }

  // -- one process: /hosts/{host}/processes/{pid} --------------------------------------------

  async function processPage(main, host, pid) {
    crumbs(["fleet", "/"], [host, hostHref(host)], ["pid " + pid]);
    const base = "/hosts/" + enc(host) + "/processes/" + pid;
    const [status, history, snapshot] = await Promise.all([
      get("/hosts/" + enc(host)),
      get(base + "/history"),
      get(base + "/snapshot").catch((e) => e),
    ]);
    const title = h("h1", {}, "Process ", h("span", { id: "pid", text: pid }), " on ",
      h("a", { href: hostHref(host), text: host }));
    const button = h("button", { id: "fresh", type: "button", text: "take a fresh snapshot" });
    const freshNote = h("span", { class: "note" });
    button.addEventListener("click", async () => {
      button.disabled = true;
      freshNote.textContent = "asking the agent…";
      try {
        await post(base + "/snapshot");
        location.reload();
      } catch (e) {
        freshNote.textContent = e.message;
        button.disabled = false;
      }
    });
    main.replaceChildren(title, h("div", { class: "toolbar" }, button, freshNote));
    const snaps = history.snapshots;
    if (snapshot instanceof ApiError) {
      if (snapshot.status === 403) {
        button.disabled = true;
        main.append(h("p", { class: "note", id: "no-layout", text: "The picture, type summary and regions need the inspector role." }));
      } else if (snapshot.status === 404) {
        main.append(h("p", { class: "note", id: "no-layout", text: "No snapshot of this process is stored yet: take one." }));
      } else {
        showError(main, snapshot);
      }
      const latest = history.points.length ? history.points[history.points.length - 1] : null;
      if (latest) main.append(h("div", { class: "figures", id: "summary" }, figure("maps", fmtInt(latest.map_count)), figure("limit", fmtInt(history.limit))));
      main.append(h("h2", { text: "Map count over time" }), chart(history));
      loaded("process");
      return;
    }
    const s = snapshot.summary;
    const p = snapshot.process;
    title.append(" ", h("span", { class: "note", text: "(" + p.name + ")" }));
    main.append(
      h("p", { class: "note" }, "snapshot ", h("span", { class: "mono", text: snapshot.snapshot_id }),
        " taken " + fmtTime(snapshot.capture_time) + " (" + fmtAgo(snapshot.capture_time) + ")",
        snaps.length >= 2 ? [" · ", h("a", { id: "diff-link", href: "/diff?a=" + enc(snaps[snaps.length - 2].snapshot_id) + "&b=" + enc(snapshot.snapshot_id), text: "diff against the previous stored snapshot" })] : ""),
      h("div", { class: "figures", id: "summary" },
        figure("regions", fmtInt(s.region_count), { id: "region-count" }),
        s.max_map_count ? figure("maps / limit", fmtInt(s.map_count) + " / " + fmtInt(s.max_map_count)) : figure("maps (no limit)", fmtInt(s.map_count)),
        s.max_map_count ? figure("headroom", fmtPct(s.headroom_fraction)) : null,
        figure("committed", fmtBytes(s.committed_bytes)),
        figure("reserved", fmtBytes(s.reserved_bytes)),
        figure("largest free", fmtBytes(s.largest_free_bytes)),
        figure("single-page regions", fmtInt(s.single_page_region_count)),
        figure("guards", fmtInt(s.guard_region_count)),
        s.unusable_bytes ? figure("unusable", fmtBytes(s.unusable_bytes)) : null),
      h("p", { class: "note", text: (p.executable || p.name) + (p.user ? " · user " + p.user : "") + " · " + p.pointer_bits + "-bit · started " + fmtTime(p.start_time) }),
      h("h2", { text: "Map count over time" }),
      chart(history),
    );
    if (!snapshot.regions) {
      main.append(h("p", { class: "note", text: "Regions not included." }));
      loaded("process");
      return;
    }
    const regions = snapshot.regions;
    const table = regionTable(snapshot);
    main.append(
      h("h2", { text: "Address space" }),
      legend(snapshot),
      picture(snapshot, table),
      h("h2", { text: "Type summary" }),
      typeSummary(snapshot),
      h("h2", { text: "Regions (" + fmtInt(regions.count) + ")" }),
      table.element,
    );
    table.refresh();
    loaded("process");
  }

  function legend(snapshot) {
    const present = new Set(snapshot.regions.class);
    if (snapshot.regions.unusable_before && snapshot.regions.unusable_before.some((u) => u > 0)) present.add(snapshot.classes.indexOf("unusable"));
    return h("div", { class: "legend" }, snapshot.classes.filter((c, i) => present.has(i) || c === "free").map((c) =>
      h("span", {}, h("span", { class: "swatch", style: "background:" + CLASS_COLORS[c] }), CLASS_LABELS[c] || c)));
  }

  function typeSummary(snapshot) {
    const known = snapshot.includes_residency;
    return sortableTable([
      { key: "class", label: "type", value: (r) => r.class, cell: (r) => h("span", {}, h("span", { class: "swatch", style: "background:" + CLASS_COLORS[r.class] }), CLASS_LABELS[r.class] || r.class) },
      { key: "size", label: "size", num: true, value: (r) => r.size_bytes, cell: (r) => fmtBytes(r.size_bytes) },
      { key: "committed", label: "committed", num: true, value: (r) => r.committed_bytes, cell: (r) => fmtBytes(r.committed_bytes) },
      { key: "resident", label: "resident", num: true, value: (r) => r.resident_bytes || 0, cell: (r) => (known ? fmtBytes(r.resident_bytes) : "-") },
      { key: "blocks", label: "blocks", num: true, value: (r) => r.blocks, cell: (r) => fmtInt(r.blocks) },
      { key: "largest", label: "largest", num: true, value: (r) => r.largest_bytes, cell: (r) => fmtBytes(r.largest_bytes) },
    ], snapshot.type_summary, { attrs: { id: "type-summary" }, sortKey: "size", desc: true });
  }

  // Map count over time against the limit, with the least-squares line to exhaustion.
  function chart(history) {
    const width = 900, height = 220, pad = 44;
    const canvas = h("canvas", { id: "history-chart", width, height, dataset: { points: history.points.length } });
    const ctx = canvas.getContext("2d");
    const pts = history.points;
    const limit = history.limit;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#5b6475";
    if (!pts.length) { ctx.fillText("no history yet", pad, height / 2); return canvas; }
    const t0 = pts[0].time;
    let t1 = pts[pts.length - 1].time;
    const f = history.forecast;
    const span = Math.max(60, t1 - t0);
    if (f && f.limit_time && f.limit_time > t1) t1 = Math.min(f.limit_time, t1 + 4 * span);
    if (t1 <= t0) t1 = t0 + 60;
    const ymax = Math.max(limit || 0, ...pts.map((q) => q.map_count)) * 1.05 || 1;
    const x = (t) => pad + ((t - t0) / (t1 - t0)) * (width - 2 * pad);
    const y = (n) => height - pad / 2 - (n / ymax) * (height - pad);
    ctx.strokeStyle = "#d9dde5"; ctx.beginPath(); ctx.moveTo(pad, y(0)); ctx.lineTo(width - pad, y(0)); ctx.stroke();
    ctx.fillText("0", 4, y(0)); ctx.fillText(fmtInt(Math.round(ymax)), 4, y(ymax) + 10);
    ctx.fillText(fmtTime(t0), pad, height - 4);
    const endLabel = fmtTime(t1); ctx.fillText(endLabel, width - pad - ctx.measureText(endLabel).width, height - 4);
    if (limit) {
      ctx.strokeStyle = "#b3261e"; ctx.setLineDash([]); ctx.beginPath(); ctx.moveTo(pad, y(limit)); ctx.lineTo(width - pad, y(limit)); ctx.stroke();
      ctx.fillStyle = "#b3261e"; ctx.fillText("limit " + fmtInt(limit), width - pad - 90, y(limit) - 4);
    }
    if (f) {
      const from = f.since_time, to = f.limit_time && f.limit_time < t1 ? f.limit_time : t1;
      ctx.strokeStyle = "#9a5b00"; ctx.setLineDash([5, 4]); ctx.beginPath();
      ctx.moveTo(x(from), y(f.intercept + f.slope_per_second * from));
      ctx.lineTo(x(to), y(f.intercept + f.slope_per_second * to)); ctx.stroke(); ctx.setLineDash([]);
      if (f.limit_time) {
        ctx.fillStyle = "#9a5b00";
        const left = f.limit_time - pts[pts.length - 1].time;
        ctx.fillText("forecast: limit in " + fmtDuration(Math.max(0, left)), pad + 8, 14);
        canvas.dataset.limitTime = f.limit_time;
      }
    }
    ctx.strokeStyle = "#2f5fb3"; ctx.lineWidth = 2; ctx.beginPath();
    pts.forEach((q, i) => (i ? ctx.lineTo(x(q.time), y(q.map_count)) : ctx.moveTo(x(q.time), y(q.map_count))));
    ctx.stroke(); ctx.lineWidth = 1;
    ctx.fillStyle = "#1d2330";
    for (const sn of history.snapshots) { ctx.beginPath(); ctx.arc(x(sn.capture_time), y(sn.map_count), 3, 0, 7); ctx.fill(); }
    return canvas;
  }

  // "#rrggbb" as the 32-bit pixel an ImageData on a little-endian machine holds.
  function pixelOf(hex) {
    const v = parseInt(hex.slice(1), 16);
    return (0xff000000 | ((v & 0xff) << 16) | (v & 0xff00) | ((v >> 16) & 0xff)) >>> 0;
  }

  // The address-space picture: a count grid (one cell per mapping, the grid sized to the
  // host's vm.max_map_count) and a byte strip (regions by log size, free gaps capped).
  // Both are painted pixel by pixel into one ImageData each, straight from the columns.
  function picture(snapshot, table) {
    const r = snapshot.regions;
    const n = r.count;
    const classes = snapshot.classes;
    const colors = classes.map((c) => CLASS_COLORS[c] || "#000000");
    const pixels = Uint32Array.from(colors, pixelOf);
    const FREE = classes.indexOf("free"), UNUSABLE = classes.indexOf("unusable");
    const unusable = r.unusable_before;
    const page = snapshot.host.page_size_bytes || 4096;
    // {class: count} of the classes drawn (tests read it from the canvases).
    const countsText = (counts) => JSON.stringify(Object.fromEntries(classes.map((c, k) => [c, counts[k]]).filter(([, v]) => v)));
    const tip = h("div", { class: "tip", id: "picture-tip" });
    document.body.append(tip);

    // Cells: every region but free ones, and on Windows each unusable sliver before one.
    const cellRegion = new Int32Array(2 * n);
    const cellClass = new Uint8Array(2 * n);
    const cellOfRegion = new Int32Array(n).fill(-1), cellOfSliver = new Int32Array(n).fill(-1);
    let cells = 0;
    for (let i = 0; i < n; i++) {
      if (unusable && unusable[i] > 0) {
        cellOfSliver[i] = cells; cellRegion[cells] = i; cellClass[cells++] = UNUSABLE;
      }
      const c = r.class[i];
      if (c !== FREE) { cellOfRegion[i] = cells; cellRegion[cells] = i; cellClass[cells++] = c; }
    }
    const gridCounts = new Int32Array(classes.length);
    for (let k = 0; k < cells; k++) gridCounts[cellClass[k]]++;
    // Windows has no map count limit: its grid is as large as its cells need.
    const limit = snapshot.host.max_map_count || snapshot.summary.max_map_count || 0;
    const side = Math.max(16, Math.ceil(Math.sqrt(Math.max(limit, cells))));
    const cell = Math.max(1, Math.min(8, Math.floor(768 / side)));
    const gw = side * cell;
    const grid = h("canvas", {
      id: "count-grid", width: gw, height: gw,
      dataset: { cells, side, limit, cellPixels: cell, classCounts: countsText(gridCounts) },
      title: "one cell per mapping; the grid holds vm.max_map_count cells",
    });
    const g = grid.getContext("2d");
    const gridImage = g.createImageData(gw, gw);
    const gp = new Uint32Array(gridImage.data.buffer);
    // One line of pixels a row of cells, copied down the cell's height.
    const empty = pixelOf("#f0f2f6");
    for (let cy = 0; cy < side; cy++) {
      const line = cy * cell * gw;
      for (let cx = 0, k = cy * side; cx < side; cx++, k++) {
        const px = k < cells ? pixels[cellClass[k]] : empty;
        for (let x = cx * cell, end = x + cell; x < end; x++) gp[line + x] = px;
      }
      for (let y = 1; y < cell; y++) gp.copyWithin(line + y * gw, line, line + gw);
    }
    g.putImageData(gridImage, 0, 0);

    // The byte strip: wrapped rows; each region log2(size / page) + 1 units wide, each
    // gap a capped width with its size written in it when there is room; an unusable
    // sliver in red at the start of its gap.
    const W = 900, ROW = 14, MAX_ROWS = 48;
    const GAP_CAP = 56, GAP_MIN = 4;
    const unitsOf = (bytes) => Math.log2(Math.max(1, bytes / page)) + 1;
    const gapWidth = (bytes) => Math.min(GAP_CAP, GAP_MIN + 2 * unitsOf(bytes));
    const units = new Float64Array(n), gapWidths = new Float64Array(n);
    let total = 0, gapPixels = 0;
    for (let i = 0; i < n; i++) {
      total += units[i] = unitsOf(r.size[i]);
      if (r.gap_before[i] > 0) gapPixels += gapWidths[i] = gapWidth(r.gap_before[i]);
    }
    const scale = Math.max(0.05, Math.min(4, (W * MAX_ROWS - gapPixels) / Math.max(1, total)));
    const pos = new Float64Array(n + 1);  // strip position of each region's start, in px
    const gapPos = new Float64Array(n);  // and of the gap before it
    let at = 0;
    for (let i = 0; i < n; i++) {
      gapPos[i] = at;
      at += gapWidths[i];
      pos[i] = at;
      at += units[i] * scale;
    }
    pos[n] = at;
    const rows = Math.max(1, Math.ceil(at / W));
    const strip = h("canvas", { id: "byte-strip", width: W, height: rows * ROW, dataset: { regions: n } });
    const s = strip.getContext("2d");
    const stripImage = s.createImageData(W, rows * ROW);
    const sp = new Uint32Array(stripImage.data.buffer);
    sp.fill(pixelOf("#ffffff"));
    const GAP = pixelOf("#e6e9ef");
    // The strip as one line of rows * W pixels, copied into each row's height after.
    const line = new Uint32Array(rows * W).fill(pixelOf("#ffffff"));
    // A run [p, p + w) of the line; at least one pixel.
    function paint(p, w, px) {
      const from = Math.floor(p), to = Math.min(line.length, Math.max(from + 1, Math.ceil(p + w)));
      for (let x = from; x < to; x++) line[x] = px;
    }
    const stripCounts = new Int32Array(classes.length);
    const sliverPos = new Float64Array(n).fill(-1);
    for (let i = 0; i < n; i++) {
      const gap = r.gap_before[i];
      if (gap > 0) paint(gapPos[i], gapWidths[i], GAP);
      paint(pos[i], units[i] * scale, pixels[r.class[i]]);
      stripCounts[r.class[i]]++;
      if (unusable && unusable[i] > 0) {
        // At the start of the free space before the region: the gap, or the free
        // region a snapshot taken with its free regions lists there.
        const listed = gap === 0 && i > 0;
        const from = listed ? pos[i - 1] : gapPos[i];
        const room = listed ? units[i - 1] * scale : gapWidths[i];
        const free = listed ? r.size[i - 1] : gap;
        paint(from, Math.min(room, Math.max(2, room * Math.min(1, unusable[i] / free) * 4)), pixels[UNUSABLE]);
        sliverPos[i] = from;
        stripCounts[UNUSABLE]++;
      }
    }
    for (let row = 0; row < rows; row++) {
      const from = row * W;
      for (let y = row * ROW + 1; y < row * ROW + ROW - 1; y++) sp.set(line.subarray(from, from + W), y * W);
    }
    s.putImageData(stripImage, 0, 0);
    strip.dataset.classCounts = countsText(stripCounts);
    s.font = "9px system-ui, sans-serif"; s.textBaseline = "middle"; s.fillStyle = "#5b6475";
    const gapLabel = (bytes) => fmtBytes(bytes).replace(/\.0 /, " ").replace(" ", "");
    for (let i = 0; i < n; i++) {
      const gap = r.gap_before[i];
      if (!gap) continue;
      const w = gapWidths[i], row = Math.floor(gapPos[i] / W), x = gapPos[i] - row * W;
      if (w >= 30 && x + w <= W) s.fillText(gapLabel(gap), x + 2, row * ROW + ROW / 2);
    }

    // Where region i is drawn, in each canvas's own pixels (tests and tools read this):
    // its cell, the cell of the unusable sliver before it, and the same in the strip;
    // null where it has none.
    const cellPoint = (k) => (k < 0 ? null : [(k % side) * cell + cell / 2, Math.floor(k / side) * cell + cell / 2]);
    const stripPoint = (p) => { const row = Math.floor(p / W); return [p - row * W, row * ROW + ROW / 2]; };
    window.vmatlasPicture = {
      colors: CLASS_COLORS,
      cell: (i) => cellPoint(cellOfRegion[i]),
      sliverCell: (i) => cellPoint(cellOfSliver[i]),
      strip: (i) => stripPoint(pos[i] + (units[i] * scale) / 2),
      sliverStrip: (i) => (sliverPos[i] < 0 ? null : stripPoint(sliverPos[i] + 0.5)),
    };

    function rowText(i) {
      const size = r.size[i];
      const start = BigInt(r.start[i]);
      const end = start + BigInt(size);
      const lines = [
        r.start[i] + "-0x" + end.toString(16),
        fmtBytes(size) + "  " + r.perms_values[r.perms[i]] + "  " + STATES[r.state[i]] + "  " + (CLASS_LABELS[classes[r.class[i]]] || classes[r.class[i]]),
      ];
      const path = r.paths[r.path[i]];
      if (path) lines.push(path);
      const gap = r.gap_before[i], lost = unusable ? unusable[i] : 0;
      const unusableText = lost ? " (" + fmtBytes(lost) + " unusable)" : "";
      if (gap) lines.push("free before: " + fmtBytes(gap) + unusableText);
      else if (lost) lines.push("free before: the free region above" + unusableText);
      return "#" + (i + 1) + "  " + lines.join("\n");
    }
    function showTip(event, i) {
      if (i < 0) { tip.style.display = "none"; return; }
      tip.textContent = rowText(i);
      tip.dataset.region = i;
      tip.style.display = "block";
      tip.style.left = Math.min(event.clientX + 14, window.innerWidth - 420) + "px";
      tip.style.top = event.clientY + 14 + "px";
    }
    function gridRegion(event) {
      const rect = grid.getBoundingClientRect();
      const cx = Math.floor(((event.clientX - rect.left) / rect.width) * side);
      const cy = Math.floor(((event.clientY - rect.top) / rect.height) * side);
      const k = cy * side + cx;
      return cx >= 0 && cx < side && k >= 0 && k < cells ? cellRegion[k] : -1;
    }
    function stripRegion(event) {
      const rect = strip.getBoundingClientRect();
      const x = ((event.clientX - rect.left) / rect.width) * W;
      const row = Math.floor(((event.clientY - rect.top) / rect.height) * rows);
      const p = row * W + x;
      let lo = 0, hi = n - 1;  // the last region starting at or before p
      while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (pos[mid] <= p) lo = mid; else hi = mid - 1; }
      return n && p >= pos[lo] && p < pos[lo] + units[lo] * scale ? lo : -1;
    }
    let pending = null;
    const hover = (find) => (event) => {
      // One lookup per frame however fast the mouse moves.
      if (pending) { pending.event = event; return; }
      pending = { event };
      requestAnimationFrame(() => { const e = pending.event; pending = null; showTip(e, find(e)); });
    };
    grid.addEventListener("mousemove", hover(gridRegion));
    strip.addEventListener("mousemove", hover(stripRegion));
    for (const c of [grid, strip]) c.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    grid.addEventListener("click", (e) => { const i = gridRegion(e); if (i >= 0) table.select(i); });
    strip.addEventListener("click", (e) => { const i = stripRegion(e); if (i >= 0) table.select(i); });

    return h("div", { class: "panes" },
      h("div", { class: "pane" }, h("div", { class: "note", text: "count grid: " + fmtInt(cells) + " of " + fmtInt(side * side) + " cells (" + (limit ? "vm.max_map_count " + fmtInt(limit) : "no map count limit") + ")" }), grid),
      h("div", { class: "pane" }, h("div", { class: "note", text: "byte strip: width by log size; free gaps capped and labelled" }), strip));
  }

  // The region table: only the rows in view exist in the DOM, so 65,530 regions scroll
  // as fast as 50.
  function regionTable(snapshot) {
    const r = snapshot.regions;
    const n = r.count;
    const classes = snapshot.classes;
    const ROW = 23, EXTRA = 10;
    const headers = ["#", "start", "end", "size", "state", "perms", "class", "offset", "rss", "path"];
    const tbody = h("tbody");
    const table = h("table", { id: "regions", dataset: { rows: n } },
      h("thead", {}, h("tr", {}, headers.map((t, i) => h("th", { class: i === 0 || i === 3 || i === 8 ? "num" : "", text: t })))), tbody);
    const spacer = h("div", { style: "height:" + (n * ROW + 30) + "px" });
    const box = h("div", { class: "vscroll", id: "regions-box" }, spacer, table);
    let selected = -1, first = -1, last = -1;
    const rss = r.rss_bytes;
    function render(force) {
      const top = box.scrollTop;
      const from = Math.max(0, Math.floor(top / ROW) - EXTRA);
      const to = Math.min(n, Math.ceil((top + box.clientHeight) / ROW) + EXTRA);
      if (!force && from === first && to === last) return;
      first = from; last = to;
      table.style.top = from * ROW + "px";
      const rows = [];
      for (let i = from; i < to; i++) {
        const start = BigInt(r.start[i]);
        const end = "0x" + (start + BigInt(r.size[i])).toString(16);
        const tr = h("tr", { class: i === selected ? "selected" : "", dataset: { index: i } },
          h("td", { class: "num", text: i + 1 }),
          h("td", { class: "mono", text: r.start[i] }),
          h("td", { class: "mono", text: end }),
          h("td", { class: "num", text: fmtBytes(r.size[i]) }),
          h("td", { text: STATES[r.state[i]] }),
          h("td", { class: "mono", text: r.perms_values[r.perms[i]] }),
          h("td", {}, h("span", { class: "swatch", style: "background:" + CLASS_COLORS[classes[r.class[i]]] }), classes[r.class[i]]),
          h("td", { class: "mono", text: r.offset[i] ? "0x" + r.offset[i].toString(16) : "" }),
          h("td", { class: "num", text: rss ? fmtBytes(rss[i]) : "" }),
          h("td", { class: "path", text: r.paths[r.path[i]] }));
        rows.push(tr);
      }
      tbody.replaceChildren(...rows);
    }
    let queued = false;
    box.addEventListener("scroll", () => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => { queued = false; render(false); });
    });
    return {
      element: box,
      refresh: () => render(true),
      select(i) {
        selected = i;
        table.dataset.selected = i;
        box.scrollTop = Math.max(0, i * ROW - box.clientHeight / 2);
        render(true);
        box.scrollIntoView({ block: "nearest" });
      },
    };
  }

  // -- a diff: /diff?a=...&b=... -------------------------------------------------------------

  async function diffPage(main) {
    crumbs(["fleet", "/"], ["diff"]);
    const q = new URLSearchParams(location.search);
    const a = q.get("a") || "", b = q.get("b") || "";
    if (!a || !b) {
      main.replaceChildren(h("h1", { text: "Diff" }), h("p", { class: "note", text: "Give two snapshots: /diff?a=SNAPSHOT_ID&b=SNAPSHOT_ID (or HOST:PID for a process's latest)." }));
      return;
    }
    const mode = q.get("mode") || "auto";
    const d = await get("/diff?a=" + enc(a) + "&b=" + enc(b) + "&mode=" + enc(mode));
    const side = (ref) => [h("a", { href: processHref(ref.host_id, ref.pid), text: ref.host_id + " pid " + ref.pid }), " (" + ref.name + ") at " + fmtTime(ref.capture_time)];
    const sm = d.summary;
    main.replaceChildren(
      h("h1", { text: "Diff by " + d.mode }),
      h("p", { id: "diff-sides" }, side(d.before), " → ", side(d.after)),
      h("div", { class: "figures", id: "diff-summary" },
        figure("regions", signed(sm.region_count.delta, fmtInt) + " (" + fmtInt(sm.region_count.before) + " → " + fmtInt(sm.region_count.after) + ")"),
        figure("maps", signed(sm.map_count.delta, fmtInt) + " (" + fmtInt(sm.map_count.before) + " → " + fmtInt(sm.map_count.after) + ")"),
        figure("committed", signed(sm.committed_bytes.delta, fmtBytes)),
        figure("reserved", signed(sm.reserved_bytes.delta, fmtBytes)),
        figure("largest free", signed(sm.largest_free_bytes.delta, fmtBytes)),
        figure("unusable", signed(sm.unusable_bytes.delta, fmtBytes))),
      h("h2", { text: "By class" }),
      d.classes.length ? sortableTable([
        { key: "regions", label: "regions", num: true, value: (c) => c.region_delta, cell: (c) => signed(c.region_delta, fmtInt) },
        { key: "bytes", label: "bytes", num: true, value: (c) => c.byte_delta, cell: (c) => signed(c.byte_delta, fmtBytes) },
        { key: "before", label: "before", num: true, value: (c) => c.regions_before, cell: (c) => fmtInt(c.regions_before) },
        { key: "after", label: "after", num: true, value: (c) => c.regions_after, cell: (c) => fmtInt(c.regions_after) },
        { key: "class", label: "class", value: (c) => c.label, cls: "path" },
      ], d.classes, { attrs: { id: "diff-classes" } }) : h("p", { class: "note", text: "no change" }),
    );
    if (d.changes.length) {
      main.append(h("h2", { text: "Changes (" + fmtInt(d.changes.length) + ")" }), sortableTable([
        { key: "kind", label: "change", value: (c) => c.kind },
        { key: "regions", label: "regions", num: true, value: (c) => c.region_delta, cell: (c) => fmtInt(c.regions_before) + " → " + fmtInt(c.regions_after) },
        { key: "bytes", label: "bytes", num: true, value: (c) => c.byte_delta, cell: (c) => signed(c.byte_delta, fmtBytes) },
        { key: "start", label: "start", value: (c) => c.start || "", cls: "mono" },
        { key: "end", label: "end", value: (c) => c.end || "", cls: "mono" },
        { key: "class", label: "class", value: (c) => c.label, cls: "path" },
        { key: "detail", label: "detail", value: (c) => c.detail || "", cls: "path" },
      ], d.changes.slice(0, 2000), { attrs: { id: "diff-changes" } }));
    }
    loaded("diff");
  }

  // -- routing -------------------------------------------------------------------------------

  async function route() {
    const main = document.getElementById("main");
    const path = location.pathname;
    let m;
    try {
      if (path === "/") await fleetPage(main);
      else if ((m = path.match(/^\/hosts\/([^/]+)\/processes\/(\d+)$/))) await processPage(main, decodeURIComponent(m[1]), Number(m[2]));
      else if ((m = path.match(/^\/hosts\/([^/]+)$/))) await hostPage(main, decodeURIComponent(m[1]));
      else if (path === "/diff") await diffPage(main);
      else main.replaceChildren(h("p", { class: "error", text: "no such page" }));
    } catch (e) {
      main.replaceChildren();
      showError(main, e);
      loaded("error");
    }
  }

  route();
})();
