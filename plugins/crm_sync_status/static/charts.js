// The status console's charts: small SVG bar and line charts over time, drawn from the JSON the
// page embeds (<script type="application/json" id="console-data">). No library, no network.
// Every bar and point carries a <title> (the browser shows it on hover) and a class the browser
// tests count: rect.bar, circle.pt, path.line, g.ref (a limit: line.ref, or text.ref-off when it
// is far above the data).
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var W = 640, H = 210, M = { top: 14, right: 14, bottom: 28, left: 60 };
  var COLORS = { a: "#3182ce", b: "#dd6b20", c: "#c53030", d: "#718096" };
  var OFF_SCALE = 4; // a limit more than this many times the largest value is named, not drawn

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function titled(node, text) {
    el("title", {}, node).textContent = text;
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) { return 1; }
    var step = Math.pow(10, Math.floor(Math.log10(value)));
    var best = [1, 2, 2.5, 5, 10].map(function (m) { return m * step; }).find(function (v) { return v >= value; });
    return best || 10 * step;
  }

  function fmtNumber(v) {
    return Number(v).toLocaleString("en-US", { maximumFractionDigits: 1 });
  }

  function fmtTime(ms, withDay) {
    var d = new Date(ms);
    var hh = String(d.getUTCHours()).padStart(2, "0") + ":" + String(d.getUTCMinutes()).padStart(2, "0");
    if (!withDay) { return hh; }
    return d.toISOString().slice(5, 10) + " " + hh;
  }

  // spec: {start, end (ms), stepMs (bar width in time), series: [{name, kind: "bar"|"line"|"points",
  // color, points: [{x (ms), y, label}]}], refs: [{y, label, color}], unit}
  function draw(host, spec) {
    host.textContent = "";
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": spec.label }, host);
    var iw = W - M.left - M.right, ih = H - M.top - M.bottom;
    var ys = [];
    spec.series.forEach(function (s) { s.points.forEach(function (p) { if (p.y !== null) { ys.push(p.y); } }); });
    var dataMax = Math.max.apply(null, ys.concat([0]));
    // A limit far above the data would flatten it: such a limit is named, not drawn to scale.
    var refs = spec.refs || [];
    var onScale = refs.filter(function (r) { return !(dataMax > 0 && r.y > OFF_SCALE * dataMax); });
    var ymax = niceMax(Math.max.apply(null, onScale.map(function (r) { return r.y; }).concat([dataMax])));
    var span = spec.end - spec.start;
    var x = function (ms) { return M.left + ((ms - spec.start) / span) * iw; };
    var y = function (v) { return M.top + ih - (v / ymax) * ih; };

    var axes = el("g", { class: "axes", fill: "#4a5568", "font-size": "10" }, svg);
    for (var i = 0; i <= 4; i++) {
      var v = (ymax / 4) * i;
      el("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), stroke: "#edf2f7" }, axes);
      el("text", { x: M.left - 4, y: y(v) + 3, "text-anchor": "end" }, axes).textContent = fmtNumber(v);
    }
    var withDay = span > 36 * 3600 * 1000;
    var tickStep = withDay ? 24 * 3600 * 1000 : 4 * 3600 * 1000;
    for (var t = Math.ceil(spec.start / tickStep) * tickStep; t <= spec.end; t += tickStep) {
      el("line", { x1: x(t), x2: x(t), y1: M.top + ih, y2: M.top + ih + 4, stroke: "#a0aec0" }, axes);
      el("text", { x: x(t), y: H - 8, "text-anchor": "middle" }, axes).textContent =
        withDay ? new Date(t).toISOString().slice(5, 10) : fmtTime(t, false);
    }
    el("line", { x1: M.left, x2: W - M.right, y1: M.top + ih, y2: M.top + ih, stroke: "#a0aec0" }, axes);
    el("line", { x1: M.left, x2: M.left, y1: M.top, y2: M.top + ih, stroke: "#a0aec0" }, axes);
    if (spec.unit) {
      var cy = M.top + ih / 2;
      el("text", { x: 10, y: cy, "text-anchor": "middle", transform: "rotate(-90 10 " + cy + ")" }, axes).textContent = spec.unit;
    }

    var legend = el("g", { class: "legend", "font-size": "10" }, svg);
    var lx = M.left + 6;
    var bars = spec.series.filter(function (s) { return s.kind === "bar"; });
    spec.series.forEach(function (s) {
      var g = el("g", { class: "series", "data-series": s.name }, svg);
      // Bar series of one chart stand side by side within their time step.
      var slot = (spec.stepMs / span) * iw / Math.max(bars.length, 1);
      var barW = Math.max(1, slot - (bars.length > 1 ? 0.5 : 1));
      var shift = Math.max(bars.indexOf(s), 0) * slot;
      var path = [];
      s.points.forEach(function (p) {
        if (p.y === null) { return; }
        var label = fmtTime(p.x, true) + " UTC — " + s.name + ": " + fmtNumber(p.y) + (p.label ? " (" + p.label + ")" : "");
        if (s.kind === "bar") {
          if (p.y <= 0) { return; }
          titled(el("rect", { class: "bar", x: x(p.x) + shift, y: y(p.y), width: barW, height: M.top + ih - y(p.y), fill: s.color }, g), label);
        } else {
          path.push((path.length ? "L" : "M") + x(p.x).toFixed(1) + "," + y(p.y).toFixed(1));
          if (s.kind === "points" || s.points.length <= 200) {
            titled(el("circle", { class: "pt", cx: x(p.x), cy: y(p.y), r: s.kind === "points" ? 3 : 1.8, fill: s.color }, g), label);
          }
        }
      });
      if (s.kind !== "bar" && path.length > 1) {
        el("path", { class: "line", d: path.join(" "), fill: "none", stroke: s.color, "stroke-width": 1.5 }, g);
      }
      el("rect", { x: lx, y: 2, width: 8, height: 8, fill: s.color }, legend);
      el("text", { x: lx + 11, y: 9 }, legend).textContent = s.name;
      lx += 18 + s.name.length * 5.5;
    });
    var offRow = 0;
    refs.forEach(function (r) {
      var g = el("g", { class: "ref", "data-ref": r.label }, svg);
      var text = r.label + ": " + fmtNumber(r.y);
      if (onScale.indexOf(r) >= 0) {
        titled(el("line", { class: "ref", x1: M.left, x2: W - M.right, y1: y(r.y), y2: y(r.y), stroke: r.color, "stroke-dasharray": "4 3" }, g), text);
        el("text", { x: W - M.right - 2, y: y(r.y) - 3, "text-anchor": "end", "font-size": "10", fill: r.color }, g).textContent = r.label;
      } else {
        offRow += 1;
        var note = el("text", { class: "ref-off", x: W - M.right - 2, y: M.top + 11 * offRow, "text-anchor": "end", "font-size": "10", fill: r.color }, g);
        note.textContent = "↑ " + text;
        titled(note, text + " (above the chart's scale)");
      }
    });
    if (!ys.some(function (v) { return v > 0; }) && !refs.length) {
      el("text", { x: M.left + iw / 2, y: M.top + ih / 2, "text-anchor": "middle", fill: "#a0aec0" }, svg).textContent = "no data in this range";
    }
  }

  function ms(iso) { return Date.parse(iso); }

  function specs(data, rangeName) {
    var r = data.ranges[rangeName];
    var start = ms(r.start), end = ms(r.end), hour = 3600 * 1000;
    var pts = function (rows, key, label) {
      return rows.map(function (p) { return { x: ms(p.t), y: p[key] === undefined ? null : p[key], label: label ? label(p) : "" }; });
    };
    var runLabel = function (p) {
      return p.run_id ? p.entity + " " + p.direction + ", run " + p.run_id : p.runs + " runs in this hour; p50 median, p95 highest";
    };
    return {
      synced: { label: "records synced per hour", start: start, end: end, stepMs: hour, unit: "records", series: [
        { name: "loaded", kind: "bar", color: COLORS.a, points: pts(r.synced, "loaded") },
        { name: "failed", kind: "bar", color: COLORS.c, points: pts(r.synced, "failed") }] },
      latency: { label: "change-to-arrival latency per run", start: start, end: end, stepMs: hour, unit: "seconds", series: [
        { name: "p50", kind: "points", color: COLORS.a, points: pts(r.latency, "p50", runLabel) },
        { name: "p95", kind: "points", color: COLORS.b, points: pts(r.latency, "p95", runLabel) }] },
      marketo: { label: "Marketo calls", start: start, end: end, stepMs: hour, unit: "calls", series: [
        { name: "calls per hour", kind: "bar", color: COLORS.a, points: pts(r.marketo, "calls") },
        { name: "today's total", kind: "line", color: COLORS.b, points: pts(r.marketo, "cumulative") }],
        refs: [{ y: data.marketo_usable, label: "usable budget", color: COLORS.c }] },
      dynamics: { label: "Dataverse calls per window", start: start, end: end, stepMs: r.dynamics_step_seconds * 1000, unit: "calls",
        series: [{ name: r.dynamics_step_seconds > 300 ? "busiest 5-min window of the hour" : "calls per 5 min", kind: "bar", color: COLORS.a, points: pts(r.dynamics, "calls") }],
        refs: [{ y: data.dynamics_window_share, label: "sync's share", color: COLORS.b },
               { y: data.dynamics_window_limit, label: "limit", color: COLORS.c }] }
    };
  }

  function render(data, rangeName) {
    var all = specs(data, rangeName);
    document.querySelectorAll("[data-chart]").forEach(function (host) {
      var spec = all[host.getAttribute("data-chart")];
      if (spec) { draw(host, spec); host.setAttribute("data-range", rangeName); }
    });
    document.querySelectorAll(".range button").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-range") === rangeName));
    });
  }

  function start() {
    var source = document.getElementById("console-data");
    if (!source) { return; }
    var data = JSON.parse(source.textContent);
    if (!data || !data.ranges) { return; }
    document.querySelectorAll(".range button").forEach(function (b) {
      b.addEventListener("click", function () { render(data, b.getAttribute("data-range")); });
    });
    render(data, "24h");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
