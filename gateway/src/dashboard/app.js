// The gateway's dashboard: reads /api/v1/mesh every two seconds and draws the mesh it
// describes. Every string from the API reaches the page through textContent or setAttribute,
// never as markup, so a hostile name shows as text. No libraries, no build step.
"use strict";

(() => {
  const API_PATH = "../api/v1/mesh";
  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const LINK_STATES = new Set(["connecting", "connected", "disconnected", "refused"]);

  // ---- Errors: counted where a test can read them, never thrown at the page. ----

  let errorCount = 0;

  function countError() {
    errorCount += 1;
    document.body.dataset.errors = String(errorCount);
  }

  window.onerror = () => {
    countError();
    return false;
  };
  window.addEventListener("unhandledrejection", countError);

  // ---- What the page knows. ----

  const state = {
    /** The last mesh read whole, or null before the first. */
    mesh: null,
    /** When it arrived (Date.now()). */
    receivedAt: 0,
    /** Why the latest fetch failed, or "" when it did not. */
    failure: "",
    /** The policies whose document is unfolded, by key. */
    openDocuments: new Set(),
    /** What the view was drawn from, to skip drawing the same page again. */
    drawn: "",
  };

  const view = document.getElementById("view");
  const banner = document.getElementById("banner");
  const status = document.getElementById("status");
  const serving = document.getElementById("serving");

  // ---- Building DOM. ----

  /** An HTML element with attributes (`class`, `dataset`, `on<event>`) and children. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value == null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    appendAll(node, children);
    return node;
  }

  /** An SVG element with attributes and children. */
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value != null) node.setAttribute(key, String(value));
    }
    appendAll(node, children);
    return node;
  }

  /** Appends nodes and strings (as text) and skips null, false and empty arrays. */
  function appendAll(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child == null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
  }

  // ---- Reading the API's JSON into values the page can trust. ----

  const text = (v) => (typeof v === "string" ? v : v == null ? "" : String(v));
  const number = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const list = (v) => (Array.isArray(v) ? v : []);
  const record = (v) => (v !== null && typeof v === "object" && !Array.isArray(v) ? v : {});

  function readLatency(value) {
    const l = record(value);
    return { p50: number(l.p50), p95: number(l.p95), p99: number(l.p99) };
  }

  function readFlow(value) {
    const t = record(value);
    return {
      namespace: text(t.namespace),
      service: text(t.service),
      source: text(t.source_cluster),
      destination: text(t.destination_cluster),
      requests: number(t.requests),
      success: number(t.success_rate),
      rps: number(t.rps),
      latency: readLatency(t.latency_ms),
      stale: t.stale === true,
    };
  }

  /** The mesh of an API answer; throws when the answer is not one. */
  function readMesh(value) {
    const m = record(value);
    if (typeof m.cluster !== "string") {
      const said = typeof m.error === "string" ? `: ${m.error}` : "";
      throw new Error(`the gateway's answer is not a mesh${said}`);
    }
    return {
      cluster: text(m.cluster),
      version: text(m.version),
      windowSeconds: number(m.window_seconds),
      clusters: list(m.clusters).map((value) => {
        const c = record(value);
        return {
          name: text(c.name),
          local: c.local === true,
          cloud: text(c.cloud),
          region: text(c.region),
          zone: text(c.zone),
          stale: c.stale === true,
        };
      }),
      links: list(m.links).map((value) => {
        const l = record(value);
        return {
          cluster: text(l.cluster),
          role: text(l.role),
          state: text(l.state),
          rtt: number(l.rtt_ms),
          lag: number(l.lag_versions),
          replicas: number(l.replicas),
          error: text(l.last_error),
        };
      }),
      services: list(m.services).map((value) => {
        const s = record(value);
        return {
          namespace: text(s.namespace),
          name: text(s.name),
          clusters: list(s.clusters).map(text),
          ports: list(s.ports).map(text),
          exported: s.exported === true,
        };
      }),
      traffic: list(m.traffic).map(readFlow),
      clusterTraffic: list(m.cluster_traffic).map(readFlow),
      policies: list(m.policies).map((value) => {
        const p = record(value);
        return {
          kind: text(p.kind),
          namespace: text(p.namespace),
          name: text(p.name),
          origin: text(p.origin),
          stamp: number(p.stamp),
          document: p.document === undefined ? null : p.document,
        };
      }),
    };
  }

  // ---- Figures as people read them. ----

  function formatRps(v) {
    if (v == null) return "—";
    if (v >= 100) return String(Math.round(v));
    return v.toFixed(v < 1 && v !== 0 ? 2 : 1);
  }

  /** The rps of an edge for `data-rps`: exact, with a decimal point ("4.0", "0.35"). */
  function dataRps(v) {
    if (v == null) return "0.0";
    return Number.isInteger(v) ? v.toFixed(1) : String(v);
  }

  /** A success rate in percent, rounded down: "100%" only when nothing failed. */
  function formatPercent(rate) {
    if (rate == null) return "—";
    const tenths = Math.floor(Math.min(1, Math.max(0, rate)) * 1000 + 1e-6);
    return tenths === 1000 ? "100%" : `${(tenths / 10).toFixed(1)}%`;
  }

  function formatMs(v) {
    if (v == null) return "—";
    if (v >= 1000) return `${(v / 1000).toFixed(2)} s`;
    if (v >= 10) return `${Math.round(v)} ms`;
    if (v > 0 && v < 0.05) return "<0.1 ms";
    return `${v.toFixed(1)} ms`;
  }

  /** good, warn, bad, or idle when there were no requests. */
  function health(rate) {
    if (rate == null) return "idle";
    if (rate >= 0.99) return "good";
    if (rate >= 0.95) return "warn";
    return "bad";
  }

  function location(cluster) {
    return [cluster.cloud, cluster.region, cluster.zone].filter((part) => part !== "").join(" / ");
  }

  /** A string cut to `max` characters with an ellipsis. */
  function fit(value, max) {
    const chars = Array.from(value);
    return chars.length > max ? `${chars.slice(0, max - 1).join("")}…` : value;
  }

  const serviceKey = (namespace, name) => `${namespace}/${name}`;
  const clusterLabel = (name) => (name === "" ? "(unnamed)" : name);

  function serviceHref(namespace, name) {
    return `#/service/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`;
  }

  function describe(error) {
    if (error instanceof Error) return error.message || error.name;
    return text(error) || "unknown error";
  }

  // ---- Routes. ----

  /** The page the hash names: overview, service (with namespace and name), policies, missing. */
  function currentRoute() {
    const path = window.location.hash.replace(/^#\/?/, "").replace(/\/$/, "");
    if (path === "") return { page: "overview" };
    const parts = path.split("/");
    let decoded;
    try {
      decoded = parts.map(decodeURIComponent);
    } catch {
      return { page: "missing" };
    }
    if (decoded.length === 1 && decoded[0] === "policies") return { page: "policies" };
    if (decoded.length === 3 && decoded[0] === "service") {
      return { page: "service", namespace: decoded[1], name: decoded[2] };
    }
    return { page: "missing" };
  }

  /** The parts of the mesh a page is drawn from (so an unchanged page is not redrawn). */
  function pageInput(route, mesh) {
    switch (route.page) {
      case "overview":
        return {
          cluster: mesh.cluster,
          clusters: mesh.clusters,
          links: mesh.links,
          services: mesh.services,
          traffic: mesh.traffic,
          clusterTraffic: mesh.clusterTraffic,
        };
      case "service":
        return {
          namespace: route.namespace,
          name: route.name,
          clusters: mesh.clusters,
          service:
            mesh.services.find((s) => s.namespace === route.namespace && s.name === route.name) ||
            null,
          traffic: mesh.traffic.filter(
            (t) => t.namespace === route.namespace && t.service === route.name,
          ),
          policies: mesh.policies.filter((p) => p.namespace === route.namespace),
        };
      case "policies":
        return { cluster: mesh.cluster, policies: mesh.policies };
      default:
        return {};
    }
  }

  function drawPage(route, input) {
    switch (route.page) {
      case "overview":
        return overviewPage(input);
      case "service":
        return servicePage(input);
      case "policies":
        return policiesPage(input);
      default:
        return missingPage();
    }
  }

  // ---- Common pieces. ----

  function section(title, note, ...body) {
    return el(
      "section",
      { class: "card" },
      el("h2", null, title),
      note ? el("p", { class: "note" }, note) : null,
      body,
    );
  }

  function empty(message) {
    return el("p", { class: "empty" }, message);
  }

  function badge(label, kind) {
    return el("span", { class: `badge badge-${kind}` }, label);
  }

  /** A table in a horizontally scrolling frame; `numeric` marks right-aligned columns. */
  function table(headings, rows, numeric = []) {
    return el(
      "div",
      { class: "table-frame" },
      el(
        "table",
        null,
        el(
          "thead",
          null,
          el(
            "tr",
            null,
            headings.map((h, i) => el("th", { class: numeric.includes(i) ? "num" : null }, h)),
          ),
        ),
        el("tbody", null, rows),
      ),
    );
  }

  function row(cells, className, numeric = []) {
    return el(
      "tr",
      { class: className || null },
      cells.map((cell, i) => el("td", { class: numeric.includes(i) ? "num" : null }, cell)),
    );
  }

  function successCell(rate) {
    return el("span", { class: `rate rate-${health(rate)}` }, formatPercent(rate));
  }

  function serviceLink(namespace, name) {
    return el("a", { href: serviceHref(namespace, name) }, serviceKey(namespace, name));
  }

  /** Flows (service traffic or cluster traffic) as a table. */
  function flowTable(flows, withService) {
    const sorted = [...flows].sort(
      (a, b) =>
        serviceKey(a.namespace, a.service).localeCompare(serviceKey(b.namespace, b.service)) ||
        a.source.localeCompare(b.source) ||
        a.destination.localeCompare(b.destination),
    );
    const headings = ["From", "To", "RPS", "Success", "p50", "p95", "p99", "Requests", ""];
    const numeric = [2, 3, 4, 5, 6, 7];
    const offset = withService ? 1 : 0;
    const rows = sorted.map((f) => {
      const cells = [
        clusterLabel(f.source),
        el(
          "span",
          null,
          clusterLabel(f.destination),
          f.source !== f.destination ? el("span", { class: "tag" }, "cross-cluster") : null,
        ),
        formatRps(f.rps),
        successCell(f.success),
        formatMs(f.latency.p50),
        formatMs(f.latency.p95),
        formatMs(f.latency.p99),
        f.requests == null ? "—" : String(f.requests),
        f.stale ? badge("stale", "stale") : null,
      ];
      if (withService) cells.unshift(serviceLink(f.namespace, f.service));
      return row(
        cells,
        f.stale ? "stale" : null,
        numeric.map((i) => i + offset),
      );
    });
    return table(
      withService ? ["Service", ...headings] : headings,
      rows,
      numeric.map((i) => i + offset),
    );
  }

  function policyKey(p) {
    return JSON.stringify([p.kind, p.namespace, p.name, p.origin]);
  }

  /** Policies as rows that unfold to their document. */
  function policyList(policies) {
    if (policies.length === 0) return empty("No policies.");
    const sorted = [...policies].sort(
      (a, b) =>
        a.namespace.localeCompare(b.namespace) ||
        a.kind.localeCompare(b.kind) ||
        a.name.localeCompare(b.name),
    );
    return el(
      "div",
      { class: "policies" },
      sorted.map((p) => {
        const key = policyKey(p);
        return el(
          "details",
          {
            class: "policy",
            open: state.openDocuments.has(key),
            ontoggle: (event) => {
              if (event.target.open) state.openDocuments.add(key);
              else state.openDocuments.delete(key);
            },
          },
          el(
            "summary",
            null,
            el("span", { class: "policy-kind" }, p.kind || "(no kind)"),
            el("span", { class: "policy-name" }, serviceKey(p.namespace, p.name)),
            el("span", { class: "policy-origin" }, `from ${clusterLabel(p.origin)}`),
            p.stamp == null ? null : el("span", { class: "policy-stamp" }, `stamp ${p.stamp}`),
          ),
          el(
            "pre",
            { class: "document" },
            p.document == null ? "(no document)" : JSON.stringify(p.document, null, 2),
          ),
        );
      }),
    );
  }

  // ---- Overview. ----

  function overviewPage(mesh) {
    return [
      section(
        "Service graph",
        "Each box is a cluster with its services; an arrow runs from the clusters whose clients " +
          "call a service to the service, labelled with requests per second, success rate and " +
          "p99 latency.",
        serviceGraph(mesh),
        mesh.clusters.length + mesh.services.length + mesh.traffic.length > 0
          ? graphLegend()
          : null,
      ),
      el("div", { class: "columns" }, clustersCard(mesh), linksCard(mesh)),
      section(
        "Traffic by pair of clusters",
        "All requests from one cluster to another (or within one), as the callers' sidecars saw them.",
        mesh.clusterTraffic.length === 0
          ? empty("No traffic in this window.")
          : flowTable(mesh.clusterTraffic, false),
      ),
      section(
        "Services",
        null,
        mesh.services.length === 0 ? empty("No services in the catalog.") : servicesTable(mesh),
      ),
    ];
  }

  function clustersCard(mesh) {
    const rows = mesh.clusters.map((c) =>
      row(
        [
          el("span", { class: "strong" }, clusterLabel(c.name)),
          location(c) || "—",
          c.local ? badge("local", "local") : "remote",
          c.stale ? badge("stale", "stale") : badge("current", "current"),
        ],
        c.stale ? "stale" : null,
      ),
    );
    return section(
      "Clusters",
      null,
      rows.length === 0
        ? empty("No clusters known.")
        : table(["Cluster", "Location", "Role", "Data"], rows),
    );
  }

  function linksCard(mesh) {
    const rows = mesh.links.map((l) =>
      row(
        [
          el("span", { class: "strong" }, clusterLabel(l.cluster)),
          l.role || "—",
          badge(l.state || "unknown", LINK_STATES.has(l.state) ? l.state : "unknown"),
          // A link without a connection reports an RTT of 0: no measure, not a fast link.
          l.rtt == null || (l.rtt === 0 && l.state !== "connected") ? "—" : formatMs(l.rtt),
          l.lag == null ? "—" : String(l.lag),
          l.replicas == null ? "—" : String(l.replicas),
          l.error === "" ? "—" : el("span", { class: "error-text" }, l.error),
        ],
        null,
        [3, 4, 5],
      ),
    );
    return section(
      "Links",
      null,
      rows.length === 0
        ? empty("This gateway has no links to other clusters.")
        : table(["Peer", "Role", "State", "RTT", "Lag", "Replicas", "Last error"], rows, [3, 4, 5]),
    );
  }

  function servicesTable(mesh) {
    const stale = new Set(mesh.clusters.filter((c) => c.stale).map((c) => c.name));
    const sorted = [...mesh.services].sort((a, b) =>
      serviceKey(a.namespace, a.name).localeCompare(serviceKey(b.namespace, b.name)),
    );
    return table(
      ["Service", "Clusters", "Ports", "Exported"],
      sorted.map((s) =>
        row([
          serviceLink(s.namespace, s.name),
          clusterChips(s.clusters, stale),
          s.ports.join(", ") || "—",
          s.exported ? "yes" : "no",
        ]),
      ),
    );
  }

  function clusterChips(names, stale) {
    return el(
      "span",
      { class: "chips" },
      names.map((name) =>
        el(
          "span",
          {
            class: stale.has(name) ? "chip chip-stale" : "chip",
            title: stale.has(name) ? "stale" : null,
          },
          clusterLabel(name),
          stale.has(name) ? " (stale)" : null,
        ),
      ),
    );
  }

  function graphLegend() {
    return el(
      "div",
      { class: "legend" },
      el("span", null, el("i", { class: "swatch swatch-cross" }), "between clusters"),
      el("span", null, el("i", { class: "swatch swatch-local" }), "within a cluster"),
      el("span", null, el("i", { class: "swatch swatch-bad" }), "success below 95%"),
      el("span", null, el("i", { class: "swatch swatch-stale" }), "stale"),
    );
  }

  // ---- The service graph. ----

  const GRAPH = {
    margin: 16,
    boxWidth: 270,
    gap: 240,
    header: 42,
    inset: 14,
    gutter: 40,
    callersHeight: 26,
    nodeHeight: 40,
    rowHeight: 50,
    labelWidth: 140,
    labelHeight: 32,
    curve: 48,
  };

  /** The clusters to draw, in order: the local one, those listed, then any only named. */
  function graphClusters(mesh) {
    const names = [];
    const seen = new Set();
    const add = (name) => {
      if (!seen.has(name)) {
        seen.add(name);
        names.push(name);
      }
    };
    mesh.clusters.filter((c) => c.local).forEach((c) => add(c.name));
    mesh.clusters.forEach((c) => add(c.name));
    const named = new Set();
    mesh.services.forEach((s) => s.clusters.forEach((c) => named.add(c)));
    mesh.traffic.forEach((t) => {
      named.add(t.source);
      named.add(t.destination);
    });
    [...named].sort().forEach(add);
    return names;
  }

  /** Boxes, nodes and anchors of the graph, laid out left to right. */
  function graphLayout(mesh) {
    const g = GRAPH;
    const names = graphClusters(mesh);
    const info = new Map(mesh.clusters.map((c) => [c.name, c]));
    const callers = new Set(mesh.traffic.map((t) => t.source));
    const index = new Map(names.map((name, i) => [name, i]));
    const arcs = mesh.traffic.filter(
      (t) => Math.abs(index.get(t.source) - index.get(t.destination)) > 1,
    ).length;
    const top = g.margin + (arcs > 0 ? 20 + arcs * 8 : 0);

    // The services of each cluster: those the catalog places there and those traffic reached.
    const services = new Map(names.map((name) => [name, new Map()]));
    for (const s of mesh.services) {
      for (const cluster of s.clusters) {
        services.get(cluster).set(serviceKey(s.namespace, s.name), {
          namespace: s.namespace,
          name: s.name,
          exported: s.exported,
          ports: s.ports,
        });
      }
    }
    for (const t of mesh.traffic) {
      const key = serviceKey(t.namespace, t.service);
      const here = services.get(t.destination);
      if (!here.has(key)) {
        here.set(key, { namespace: t.namespace, name: t.service, exported: null, ports: [] });
      }
      // Traffic from its own cluster is written in the node, in place of its ports.
      if (t.source === t.destination) here.get(key).calledLocally = true;
    }

    const boxes = names.map((name, i) => {
      const x = g.margin + i * (g.boxWidth + g.gap);
      let y = top + g.header;
      const callerNode = callers.has(name)
        ? { x: x + g.inset, y, w: g.boxWidth - 2 * g.inset, h: g.callersHeight }
        : null;
      if (callerNode) y += g.callersHeight + 14;
      const keys = [...services.get(name).keys()].sort();
      const nodes = new Map(
        keys.map((key, k) => [
          key,
          {
            ...services.get(name).get(key),
            x: x + g.gutter,
            y: y + k * g.rowHeight,
            w: g.boxWidth - g.gutter - g.inset,
            h: g.nodeHeight,
          },
        ]),
      );
      const contentBottom =
        keys.length > 0
          ? y + (keys.length - 1) * g.rowHeight + g.nodeHeight
          : callerNode
            ? y - 14
            : y + 18;
      const c = info.get(name);
      return {
        name,
        x,
        y: top,
        w: g.boxWidth,
        h: contentBottom + g.inset - top,
        local: c ? c.local : false,
        stale: c ? c.stale : false,
        location: c ? location(c) : "",
        callers: callerNode,
        nodes,
      };
    });
    return { top, boxes, index };
  }

  /** Where an edge's label sits: in the gap beside the destination, on the caller's side. */
  function placeLabels(layout, edges) {
    const g = GRAPH;
    const gaps = new Map();
    for (const edge of edges) {
      if (edge.local) continue;
      const from = layout.index.get(edge.flow.source);
      const to = layout.index.get(edge.flow.destination);
      const gapIndex = from < to ? to - 1 : to;
      const left = layout.boxes[gapIndex];
      edge.label = {
        cx: left.x + left.w + g.gap / 2,
        cy: Math.abs(from - to) > 1 ? edge.end.y : (edge.start.y + edge.end.y) / 2,
      };
      if (!gaps.has(gapIndex)) gaps.set(gapIndex, []);
      gaps.get(gapIndex).push(edge);
    }
    // Labels in one gap are stacked so none covers another.
    for (const inGap of gaps.values()) {
      inGap.sort((a, b) => a.label.cy - b.label.cy);
      let floor = layout.top + g.labelHeight / 2;
      for (const edge of inGap) {
        edge.label.cy = Math.max(edge.label.cy, floor);
        floor = edge.label.cy + g.labelHeight + 6;
      }
    }
  }

  function serviceGraph(mesh) {
    const g = GRAPH;
    const layout = graphLayout(mesh);
    if (layout.boxes.length === 0) return empty("No clusters, services or traffic yet.");
    const byName = new Map(layout.boxes.map((b) => [b.name, b]));

    const edges = mesh.traffic.map((flow) => {
      const from = byName.get(flow.source);
      const to = byName.get(flow.destination);
      const node = to.nodes.get(serviceKey(flow.namespace, flow.service));
      const local = flow.source === flow.destination;
      const rightward = layout.index.get(flow.source) < layout.index.get(flow.destination);
      const callers = from.callers;
      let start;
      let end;
      if (local) {
        start = { x: from.x + 26, y: callers.y + callers.h };
        end = { x: node.x, y: node.y + node.h / 2 + 7 };
      } else if (rightward) {
        start = { x: callers.x + callers.w, y: callers.y + callers.h / 2 };
        end = { x: node.x, y: node.y + node.h / 2 - 7 };
      } else {
        start = { x: callers.x, y: callers.y + callers.h / 2 };
        end = { x: node.x + node.w, y: node.y + node.h / 2 };
      }
      return { flow, local, rightward, start, end, node, label: null };
    });
    placeLabels(layout, edges);

    let arc = 0;
    const edgeElements = edges.map((edge) => {
      const far =
        !edge.local &&
        Math.abs(layout.index.get(edge.flow.source) - layout.index.get(edge.flow.destination)) > 1;
      return drawEdge(edge, far ? layout.top - 16 - 8 * arc++ : null);
    });

    const width =
      g.margin * 2 + layout.boxes.length * g.boxWidth + (layout.boxes.length - 1) * g.gap;
    const bottoms = [
      ...layout.boxes.map((b) => b.y + b.h),
      ...edges.filter((e) => e.label).map((e) => e.label.cy + g.labelHeight / 2),
    ];
    const height = Math.max(...bottoms) + g.margin;

    return el(
      "div",
      { class: "graph-frame" },
      svg(
        "svg",
        {
          class: "graph",
          width,
          height,
          viewBox: `0 0 ${width} ${height}`,
          role: "img",
          "aria-label": "Service graph across clusters",
        },
        arrowMarkers(),
        layout.boxes.map(drawBox),
        edgeElements,
      ),
    );
  }

  function arrowMarkers() {
    const kinds = ["cross", "local", "warn", "bad", "idle", "stale"];
    return svg(
      "defs",
      null,
      kinds.map((kind) =>
        svg(
          "marker",
          {
            id: `arrow-${kind}`,
            viewBox: "0 0 10 10",
            refX: 9,
            refY: 5,
            markerWidth: 7,
            markerHeight: 7,
            markerUnits: "userSpaceOnUse",
            orient: "auto",
          },
          svg("path", { d: "M0,0 L10,5 L0,10 z", class: `arrowhead arrowhead-${kind}` }),
        ),
      ),
    );
  }

  function drawBox(box) {
    const g = GRAPH;
    const tags = [box.local ? "local" : null, box.stale ? "stale" : null]
      .filter(Boolean)
      .join(" · ");
    const classes = [
      "cluster",
      box.local ? "cluster-local" : null,
      box.stale ? "cluster-stale" : null,
    ];
    return svg(
      "g",
      { class: classes.filter(Boolean).join(" "), "data-cluster": box.name },
      svg(
        "title",
        null,
        `cluster ${clusterLabel(box.name)}${box.location ? ` (${box.location})` : ""}${box.stale ? ", stale" : ""}`,
      ),
      svg("rect", { class: "cluster-box", x: box.x, y: box.y, width: box.w, height: box.h, rx: 8 }),
      // About 8.5 px a character of the name, 7.5 of the tags (capitals).
      svg(
        "text",
        { class: "cluster-name", x: box.x + g.inset, y: box.y + 18 },
        fit(
          clusterLabel(box.name),
          Math.floor((box.w - 2 * g.inset - 7.5 * tags.length - 8) / 8.5),
        ),
      ),
      svg(
        "text",
        { class: "cluster-tags", x: box.x + box.w - g.inset, y: box.y + 18, "text-anchor": "end" },
        tags,
      ),
      svg(
        "text",
        { class: "cluster-location", x: box.x + g.inset, y: box.y + 33 },
        fit(box.location || (box.local ? "this cluster" : "remote cluster"), 34),
      ),
      box.callers
        ? svg(
            "g",
            { class: "callers" },
            svg("rect", {
              x: box.callers.x,
              y: box.callers.y,
              width: box.callers.w,
              height: box.callers.h,
              rx: 13,
            }),
            svg(
              "text",
              {
                x: box.callers.x + box.callers.w / 2,
                y: box.callers.y + 17,
                "text-anchor": "middle",
              },
              "clients in this cluster",
            ),
          )
        : null,
      box.nodes.size === 0 && !box.callers
        ? svg(
            "text",
            { class: "cluster-empty", x: box.x + g.inset, y: box.y + g.header + 12 },
            "no services",
          )
        : null,
      [...box.nodes.values()].map((node) => drawNode(node, box)),
    );
  }

  function drawNode(node, box) {
    const key = serviceKey(node.namespace, node.name);
    const classes = ["service", node.exported === false ? "service-private" : null];
    const detail = node.calledLocally ? "" : node.ports.join(", ");
    return svg(
      "a",
      { href: serviceHref(node.namespace, node.name), class: "service-link" },
      svg(
        "g",
        {
          class: classes.filter(Boolean).join(" "),
          "data-service": key,
          "data-in-cluster": box.name,
        },
        svg(
          "title",
          null,
          `${key} in ${clusterLabel(box.name)}${node.exported === false ? " (not exported)" : ""}`,
        ),
        svg("rect", { x: node.x, y: node.y, width: node.w, height: node.h, rx: 6 }),
        svg("text", { class: "service-name", x: node.x + 10, y: node.y + 16 }, fit(key, 25)),
        // The second line shows the traffic from this cluster (see drawEdge), or else the ports.
        detail
          ? svg(
              "text",
              { class: "service-detail", x: node.x + 10, y: node.y + 31 },
              fit(detail, 32),
            )
          : null,
      ),
    );
  }

  /** An edge: its path, and its label in the gap (between clusters) or in the node (within). */
  function drawEdge(edge, arcY) {
    const g = GRAPH;
    const f = edge.flow;
    const kind = f.stale ? "stale" : edge.local ? "local" : "cross";
    const rate = health(f.success);
    const marker = f.stale ? "stale" : rate === "good" ? kind : rate;
    const classes = [
      "edge",
      edge.local ? "edge-local" : "edge-cross",
      `edge-${rate}`,
      f.stale ? "edge-stale" : null,
    ];
    const first = `${formatRps(f.rps)} rps · ${formatPercent(f.success)}`;
    const second = `p99 ${formatMs(f.latency.p99)}${f.stale ? " · stale" : ""}`;
    const width =
      f.rps == null || f.rps <= 0 ? 1.2 : 1.5 + Math.min(3, Math.log10(1 + f.rps) * 1.5);

    let d;
    let label = null;
    const { start: s, end: e } = edge;
    if (edge.local) {
      d = `M${s.x},${s.y} L${s.x},${e.y - 6} Q${s.x},${e.y} ${s.x + 6},${e.y} L${e.x},${e.y}`;
      label = [
        svg(
          "text",
          { class: "edge-inline", x: edge.node.x + 10, y: edge.node.y + 31 },
          `${first} · p99 ${formatMs(f.latency.p99)}`,
        ),
        f.stale
          ? svg(
              "text",
              {
                class: "edge-inline-stale",
                x: edge.node.x + edge.node.w - 8,
                y: edge.node.y + 16,
                "text-anchor": "end",
              },
              "stale",
            )
          : null,
      ];
    } else {
      const l = edge.label;
      const half = g.labelWidth / 2;
      const toward = edge.rightward ? 1 : -1;
      const enter = { x: l.cx - toward * half, y: l.cy };
      const leave = { x: l.cx + toward * half, y: l.cy };
      const c = g.curve * toward;
      const intoLabel =
        arcY == null
          ? `M${s.x},${s.y} C${s.x + c},${s.y} ${enter.x - c},${enter.y} ${enter.x},${enter.y}`
          : // Over the clusters between, then down beside the label (not through its neighbours).
            `M${s.x},${s.y} C${s.x + c},${s.y} ${s.x + c},${arcY} ${s.x + 2 * c},${arcY} ` +
            `L${enter.x - c},${arcY} C${enter.x - c / 2},${arcY} ${enter.x - c / 2},${enter.y} ${enter.x},${enter.y}`;
      d = `${intoLabel} M${leave.x},${leave.y} C${leave.x + c},${leave.y} ${e.x - c},${e.y} ${e.x},${e.y}`;
      label = svg(
        "g",
        { class: "edge-label" },
        svg("rect", {
          x: l.cx - half,
          y: l.cy - g.labelHeight / 2,
          width: g.labelWidth,
          height: g.labelHeight,
          rx: 5,
        }),
        svg(
          "text",
          { class: "edge-label-main", x: l.cx, y: l.cy - 2, "text-anchor": "middle" },
          first,
        ),
        svg(
          "text",
          { class: "edge-label-sub", x: l.cx, y: l.cy + 11, "text-anchor": "middle" },
          second,
        ),
      );
    }
    const title =
      `${clusterLabel(f.source)} → ${serviceKey(f.namespace, f.service)} in ${clusterLabel(f.destination)}: ` +
      `${formatRps(f.rps)} rps, ${formatPercent(f.success)} success, p50 ${formatMs(f.latency.p50)}, ` +
      `p95 ${formatMs(f.latency.p95)}, p99 ${formatMs(f.latency.p99)}${f.stale ? " (stale)" : ""}`;
    return svg(
      "a",
      { href: serviceHref(f.namespace, f.service), class: "edge-link" },
      svg(
        "g",
        {
          class: classes.filter(Boolean).join(" "),
          "data-source": f.source,
          "data-destination": f.destination,
          "data-service": serviceKey(f.namespace, f.service),
          "data-rps": dataRps(f.rps),
          "data-stale": f.stale ? "true" : "false",
        },
        svg("title", null, title),
        svg("path", {
          class: "edge-path",
          d,
          "stroke-width": width.toFixed(2),
          "marker-end": `url(#arrow-${marker})`,
        }),
        label,
      ),
    );
  }

  // ---- A service's page. ----

  function servicePage(input) {
    const key = serviceKey(input.namespace, input.name);
    const stale = new Set(input.clusters.filter((c) => c.stale).map((c) => c.name));
    const s = input.service;
    const known = s !== null || input.traffic.length > 0;
    const served = s ? s.clusters : [...new Set(input.traffic.map((t) => t.destination))];
    return [
      el(
        "div",
        { class: "page-title" },
        el("a", { href: "#/", class: "crumb" }, "Overview"),
        el("span", { class: "crumb-sep" }, "›"),
        el("h1", null, key),
      ),
      known
        ? section(
            "Service",
            null,
            el(
              "dl",
              { class: "facts" },
              el("dt", null, "Namespace"),
              el("dd", null, input.namespace),
              el("dt", null, "Served in"),
              el("dd", null, served.length === 0 ? "—" : clusterChips(served, stale)),
              el("dt", null, "Ports"),
              el("dd", null, s && s.ports.length > 0 ? s.ports.join(", ") : "—"),
              el("dt", null, "Exported"),
              el(
                "dd",
                null,
                s
                  ? s.exported
                    ? "yes: other clusters can call it"
                    : "no: only its own cluster"
                  : "—",
              ),
            ),
          )
        : section("Service", null, empty(`The mesh has no service ${key}.`)),
      section(
        "Traffic",
        "Requests to this service as its servers' sidecars saw them, by calling cluster.",
        input.traffic.length === 0
          ? empty("No requests in this window.")
          : flowTable(input.traffic, false),
      ),
      section(`Policies in namespace ${input.namespace}`, null, policyList(input.policies)),
    ];
  }

  // ---- Policies. ----

  function policiesPage(input) {
    return [
      el("div", { class: "page-title" }, el("h1", null, "Policies")),
      section(
        "Mesh-wide policies",
        `As ${clusterLabel(input.cluster)} holds them; open one to read its document.`,
        policyList(input.policies),
      ),
    ];
  }

  function missingPage() {
    return [
      section(
        "Nothing here",
        null,
        el(
          "p",
          null,
          "This address names no page. ",
          el("a", { href: "#/" }, "Back to the overview."),
        ),
      ),
    ];
  }

  // ---- Drawing the whole page. ----

  function secondsAgo(then) {
    return Math.max(0, Math.round((Date.now() - then) / 1000));
  }

  /** The header, the status line and the error banner (every second, and after each poll). */
  function drawStatus() {
    const mesh = state.mesh;
    if (mesh) {
      serving.replaceChildren(
        el("span", { class: "serving-cluster" }, `cluster ${clusterLabel(mesh.cluster)}`),
        el("span", { class: "serving-version" }, mesh.version ? `v${mesh.version}` : ""),
      );
      const windowNote =
        mesh.windowSeconds == null ? "" : ` · figures over ${mesh.windowSeconds} s`;
      status.textContent = `updated ${secondsAgo(state.receivedAt)} s ago${windowNote}`;
    } else {
      status.textContent = state.failure ? "no data yet" : "loading…";
    }
    if (state.failure) {
      const kept = mesh ? ` Showing the data of ${secondsAgo(state.receivedAt)} s ago.` : "";
      banner.textContent = `Cannot read the mesh from the gateway: ${state.failure}.${kept}`;
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
    view.classList.toggle("outdated", Boolean(state.failure) && Boolean(mesh));
    document.body.classList.toggle("failing", Boolean(state.failure));
  }

  function drawNav(route) {
    for (const link of document.querySelectorAll(".nav a")) {
      link.classList.toggle("active", link.dataset.route === route.page);
    }
  }

  function draw() {
    try {
      drawStatus();
      const route = currentRoute();
      drawNav(route);
      const mesh = state.mesh;
      if (!mesh) {
        const waiting = state.failure
          ? "No data yet; trying again every 2 s."
          : "Loading the mesh…";
        view.replaceChildren(empty(waiting));
        return;
      }
      document.title = `strait · ${clusterLabel(mesh.cluster)}`;
      const input = pageInput(route, mesh);
      const drawn = JSON.stringify([window.location.hash, input]);
      if (drawn !== state.drawn) {
        view.replaceChildren(...drawPage(route, input));
        state.drawn = drawn;
      }
      document.body.dataset.ready = "true";
    } catch (error) {
      // A bug of this page: counted, said once on the console and in the banner.
      countError();
      state.drawn = "";
      console.error("strait dashboard cannot draw the page:", error);
      banner.textContent = `The dashboard cannot draw this data: ${describe(error)}`;
      banner.hidden = false;
    }
  }

  // ---- Reading the mesh. ----

  async function fetchMesh() {
    const controller = new AbortController();
    const timer = window.setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(API_PATH, {
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: controller.signal,
      });
      if (!response.ok) {
        throw new Error(`the gateway answered ${response.status} ${response.statusText}`.trim());
      }
      let body;
      try {
        body = await response.json();
      } catch {
        throw new Error("the gateway's answer is not JSON");
      }
      return readMesh(body);
    } catch (error) {
      if (error instanceof DOMException && error.name === "AbortError") {
        throw new Error(`no answer within ${FETCH_TIMEOUT_MS / 1000} s`);
      }
      if (error instanceof TypeError) {
        throw new Error(`the gateway cannot be reached (${error.message})`);
      }
      throw error;
    } finally {
      window.clearTimeout(timer);
    }
  }

  async function poll() {
    try {
      state.mesh = await fetchMesh();
      state.receivedAt = Date.now();
      state.failure = "";
    } catch (error) {
      state.failure = describe(error);
    }
    draw();
    window.setTimeout(poll, POLL_MS);
  }

  window.addEventListener("hashchange", draw);
  window.setInterval(drawStatus, 1000);
  poll();
})();
