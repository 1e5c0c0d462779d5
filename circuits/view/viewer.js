// The circuit viewer (circuits/view): draws the embedded graphs with Cytoscape.js. Edges are ranked here, by the
// rules of HeadGraph.top_edges (signed: by score; absolute: by |score|; ties keep the graph's order), and only the
// top `size` of them are added to the drawing, so that a 44k-edge graph opens as fast as a small one. A graph scored
// per position (data.positions) is drawn in columns, one per token or span, each a layer stack from the input
// (bottom) to the read-out (top), with each edge at a position inside its column: in the library's decomposition an
// edge at p carries the sender's output at p into the receiver's input at p (movement across positions happens
// inside the receiving head's attention).
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("circuit-data").textContent);
  var GRAPHS = DATA.graphs;
  GRAPHS.forEach(function (g) { g.hasMlp = g.nodes.some(function (n) { return n[1] === "mlp"; }); });
  var INPUTS = ["q", "k", "v"];
  var COLUMN = 80;  // layers are columns from the input (left) to the read-out (right); see spacing
  var STEP = COLUMN;  // the distance from one layer to the next in the current layout (for bend)
  var CELL = 44;  // in columns: the distance between neighbouring heads of a layer
  var INPUT_STYLE = {q: "solid", k: "dashed", v: "dotted"};
  var FAST = 1500;  // above this many drawn edges, straight lines instead of arcs
  var INPUT_ARROW = {q: "triangle", k: "tee", v: "circle"};
  var $ = function (id) { return document.getElementById(id); };
  var state = {graph: 0, diff: -1, effect: null, inputs: "split", by: DATA.by, size: null, focus: null,
               positions: GRAPHS[0].positions ? "columns" : "summed"};
  var cache = {};
  var firstDraw = null;

  // --- ranking -------------------------------------------------------------------------------------------
  function hasInputs(g) { return g.split.input.some(function (x) { return x !== null; }); }

  function columns() {
    // Whether edges are drawn at their positions: asked for, and every shown graph was scored per position.
    return state.positions === "columns" && [state.graph, state.diff].every(function (gi) {
      return gi < 0 || Boolean(GRAPHS[gi].positions);
    });
  }

  function labels() {
    // The columns: the shown graphs' labels, in order of first appearance.
    var out = [];
    [state.graph, state.diff].forEach(function (gi) {
      if (gi >= 0) GRAPHS[gi].positions.labels.forEach(function (x) { if (out.indexOf(x) < 0) out.push(x); });
    });
    return out;
  }

  function entries(gi) {
    // The graph's edges under the current effect, input and position mode, ranked:
    // [{s, r (drawn node ids), from, to (node names), input, at (label or undefined), score, e, key, rank}].
    // At positions, the ranking stops at the page's limit (data.py embeds only the top ones of either ranking).
    var g = GRAPHS[gi], effect = effectOf(gi), cols = columns(), split = state.inputs === "split" && hasInputs(g);
    var id = [gi, effect, split, cols, state.by].join("|");
    if (cache[id]) return cache[id];
    var e = g.edges, out = [], i;
    var add = function (row, input, score, at) {
      if (g.effects[e.effect[row]] !== effect) return;
      var s = g.nodes[e.s[row]][0], r = g.nodes[e.r[row]][0], where = at === undefined ? "" : "@" + at;
      out.push({s: s + where, r: r + where, from: s, to: r, input: input, at: at, score: score, e: row,
                effect: effect, key: s + ">" + r + (input ? "." + input : "") + where});
    };
    var p = g.positions;
    if (cols) {
      for (i = 0; i < p.e.length; i++) {
        add(p.e[i], p.input[i] === null ? null : INPUTS[p.input[i]], p.score[i], p.labels[p.at[i]]);
      }
    } else if (split) {
      for (i = 0; i < g.split.e.length; i++) {
        add(g.split.e[i], g.split.input[i] === null ? null : INPUTS[g.split.input[i]], g.split.score[i]);
      }
    } else {
      for (i = 0; i < e.s.length; i++) add(i, null, e.score[i]);
    }
    var key = state.by === "absolute" ? function (x) { return Math.abs(x.score); } : function (x) { return x.score; };
    out.sort(function (a, b) { return key(b) - key(a); });  // stable: ties keep the graph's order
    if (cols) out = out.slice(0, p.limit);
    out.forEach(function (x, rank) { x.rank = rank + 1; });
    cache[id] = out;
    return out;
  }

  function parts(g, row) {
    // The q, k and v scores of graph edge `row` (its split entries), for the hover panel.
    if (!g.partsOf) {
      g.partsOf = {};
      g.split.e.forEach(function (r, i) {
        if (g.split.input[i] === null) return;
        (g.partsOf[r] = g.partsOf[r] || {})[INPUTS[g.split.input[i]]] = g.split.score[i];
      });
    }
    return g.partsOf[row] || {};
  }

  function effectOf(gi) {
    // The chosen effect where the graph has it, else the effect most of its edges measure.
    var g = GRAPHS[gi];
    if (state.effect !== null && g.effects.indexOf(state.effect) >= 0) return state.effect;
    var counts = g.effects.map(function () { return 0; });
    g.edges.effect.forEach(function (x) { counts[x] += 1; });
    return g.effects[counts.indexOf(Math.max.apply(null, counts))];
  }

  // --- colours -----------------------------------------------------------------------------------------
  function mix(a, b, t) {
    var pa = [1, 3, 5].map(function (i) { return parseInt(a.substr(i, 2), 16); });
    var pb = [1, 3, 5].map(function (i) { return parseInt(b.substr(i, 2), 16); });
    return "rgb(" + pa.map(function (x, i) { return Math.round(x + (pb[i] - x) * t); }).join(",") + ")";
  }
  function diverging(score, limit) {  // blue: helps, red: hurts, white: nothing (the matplotlib figure's RdBu)
    if (score === null) return "#e6e6e6";
    var t = Math.max(-1, Math.min(1, score / (limit || 1)));
    return t >= 0 ? mix("#f7f7f7", "#2166ac", t) : mix("#f7f7f7", "#b2182b", -t);
  }

  // --- drawing -----------------------------------------------------------------------------------------
  function spacing(g) {
    // Columns that fill the panel's width (at least 80 units: a label's width), and rows as tall as makes the whole
    // graph about the shape of the panel (30 layers of 9 heads: not a thin strip; 2 layers: not a small island).
    var box = $("cy").getBoundingClientRect(), width = box.width || 1000, aspect = box.height / width || 0.6;
    COLUMN = Math.max(80, 0.9 * width / (g.layers + 2));
    return Math.max(44, aspect * (g.layers + 2) * COLUMN / ((g.heads || 1) + 1.4));
  }

  function stack(g) { return (g.heads || 1) - 1 + (g.hasMlp ? 1.4 : 0); }  // a layer's extent: its heads, its MLP

  function position(g, node) {
    var ROW = spacing(g), kind = node[1], layer = node[2];
    var middle = stack(g) * ROW / 2;  // the input and read-out: level with the middle
    if (kind === "embed") return {x: 0, y: middle};
    if (kind === "logits") return {x: (g.layers + 1) * COLUMN, y: middle};
    if (kind === "mlp") return {x: (layer + 1) * COLUMN, y: (g.heads + 0.4) * ROW};
    return {x: (layer + 1) * COLUMN + (node[3] % 2 ? COLUMN * 0.15 : 0), y: node[3] * ROW};
  }

  function panelAspect() {  // the drawing panel's width / height
    var box = $("cy").getBoundingClientRect();
    return (box.width || 1000) / (box.height || 600);
  }

  function bandRows(g) { return g.layers + 2.6; }  // a band of columns: its layers, the input and read-out, a gap

  function grid(g) {
    // Columns side by side in one band while, with layers at most 120 apart, that band is not much wider than the
    // panel's shape; beyond (many tokens), they wrap into bands of `perRow` stacked downwards, as many per band as
    // keeps the whole about the panel's shape.
    var n = labels().length, width = columnWidth(g), tallest = bandRows(g) * 120, aspect = panelAspect();
    var perRow = n * width <= 1.5 * aspect * tallest ? n : Math.ceil(Math.sqrt(n * aspect * tallest / width));
    perRow = Math.max(1, Math.min(n, perRow));
    return {perRow: perRow, bands: Math.ceil(n / perRow)};
  }

  function columnSpacing(g, layout) {
    // In columns: layers are rows, from the input (bottom) to the read-out (top), as tall as makes the bands of
    // columns (`layout`, from `grid`) together about the shape of the panel (and no taller than 120 units: a 2-layer
    // graph stays compact).
    var width = layout.perRow * columnWidth(g);
    return Math.min(120, Math.max(40, width / panelAspect() / (layout.bands * bandRows(g))));
  }

  function columnWidth(g) { return (stack(g) + 2.6) * CELL; }  // a layer and a gap to the next column

  function positionAt(g, node, column, ROW, perRow) {
    // The node's place in column `column` (rows ROW apart; `perRow` columns a band, bands downwards): a layer's
    // heads side by side (odd ones a little higher, so that an edge to the next layer does not run through them),
    // its MLP at the right.
    var kind = node[1], layer = node[2], left = (column % perRow) * columnWidth(g), middle = left + stack(g) * CELL / 2;
    var base = Math.floor(column / perRow) * bandRows(g) * ROW;
    if (kind === "embed") return {x: middle, y: base};
    if (kind === "logits") return {x: middle, y: base - (g.layers + 1) * ROW};
    if (kind === "mlp") return {x: left + (g.heads + 0.4) * CELL, y: base - (layer + 1) * ROW};
    return {x: left + node[3] * CELL, y: base - (layer + 1) * ROW - (node[3] % 2 ? ROW * 0.15 : 0)};
  }

  var cy = cytoscape({
    container: $("cy"), minZoom: 0.05, maxZoom: 4, boxSelectionEnabled: false,
    style: [
      {selector: "node", style: {"label": "data(name)", "font-size": 9, "min-zoomed-font-size": 6, "text-valign": "center", "text-halign": "center",
        "width": 36, "height": 20, "shape": "round-rectangle", "background-color": "data(color)",
        "border-width": 1, "border-color": "#777", "color": "#111"}},
      {selector: "node.special", style: {"background-color": "#555", "color": "#fff", "width": 44, "shape": "ellipse"}},
      {selector: "node.mlp", style: {"shape": "rectangle"}},
      {selector: "node.unmeasured", style: {"border-style": "dashed"}},
      {selector: "node.outside", style: {"opacity": 0.28}},
      {selector: "node.found", style: {"border-width": 4, "border-color": "#f1a340", "opacity": 1}},
      {selector: "node.focus", style: {"border-width": 3, "border-color": "#000", "opacity": 1}},
      // a column (one per position): a compound node around its copy of the graph's nodes, its label on top
      {selector: "node.column", style: {"label": "data(label)", "text-valign": "top", "text-halign": "center",
        "font-size": 16, "min-zoomed-font-size": 0, "color": "#444", "background-color": "#f4f5f8", "border-color": "#ccd",
        "shape": "round-rectangle", "padding": 12, "events": "no"}},
      {selector: "node.axis", style: {"background-opacity": 0, "border-width": 0, "font-size": 18,
        "min-zoomed-font-size": 0, "color": "#888", "events": "no", "width": 60}},
      {selector: "edge", style: {"width": "data(width)", "line-color": "data(color)", "target-arrow-color": "data(color)",
        "target-arrow-shape": "data(arrow)", "line-style": "data(line)", "arrow-scale": 0.8, "opacity": 0.75,
        "curve-style": "unbundled-bezier", "control-point-distances": "data(bend)", "control-point-weights": 0.5}},
      // many edges: haystack lines (no arrows, no dashes) draw several times faster than arcs
      {selector: "edge.fast", style: {"curve-style": "haystack", "haystack-radius": 0, "line-style": "solid"}},
      {selector: "edge.hidden", style: {"display": "none"}},
      {selector: "edge:selected, edge.hover", style: {"opacity": 1, "underlay-color": "#f1a340",
        "underlay-opacity": 0.5, "underlay-padding": 3}}
    ]
  });
  cy.one("render", function () { firstDraw = performance.now(); });

  function graphNodes() {
    // Every node of the shown graph (and, in the diff view, of the other graph), placed by layer.
    var seen = {}, out = [];
    [state.graph, state.diff].forEach(function (gi) {
      if (gi < 0) return;
      var g = GRAPHS[gi];
      g.nodes.forEach(function (n) { if (!seen[n[0]]) { seen[n[0]] = true; out.push({g: g, node: n, own: gi === state.graph}); } });
    });
    return out;
  }

  function graphNodesDrawn() { return cy.nodes().not(".axis, .column"); }

  function rebuildNodes() {
    var g = GRAPHS[state.graph];
    var limit = Math.max.apply(null, g.nodes.map(function (n) { return n[4] === null ? 0 : Math.abs(n[4]); }).concat([1e-12]));
    var scores = {};
    g.nodes.forEach(function (n) { scores[n[0]] = n[4]; });
    var cols = columns() ? labels() : [undefined];
    var layout = columns() ? grid(g) : {perRow: 1, bands: 1};
    var tokens = columns() && g.positions.kind === "tokens", ROW = columns() ? columnSpacing(g, layout) : spacing(g);
    STEP = columns() ? ROW : COLUMN;  // spacing(g) sets COLUMN
    cy.batch(function () {
      cy.elements().remove();
      cols.forEach(function (label, column) {
        var where = label === undefined ? "" : "@" + label;
        if (where) {
          cy.add({group: "nodes", data: {id: "column" + where, label: (tokens ? "token " : "") + label,
                  color: "#fff"}, classes: "column", selectable: false, grabbable: false});
        }
        cy.add(graphNodes().map(function (x) {
          var n = x.node, kind = n[1], score = x.own ? n[4] : (n[0] in scores ? scores[n[0]] : null);
          var special = kind === "embed" || kind === "logits";
          var classes = [special ? "special" : kind, score === null && !special ? "unmeasured" : ""];
          return {group: "nodes", data: {id: n[0] + where, name: n[0], at: label, parent: where ? "column" + where : undefined,
                  kind: kind, layer: n[2], head: n[3], score: score, color: diverging(score, limit)},
                  position: where ? positionAt(x.g, n, column, ROW, layout.perRow) : position(x.g, n), classes: classes.join(" "), locked: true};
        }));
      });
      var every = g.layers > 16 ? 5 : 1;
      for (var band = 0; band < layout.bands; band++) {  // layer headings (not part of the graph), each band's
        for (var layer = 0; layer < g.layers; layer += every) {
          cy.add({group: "nodes", data: {id: "layer " + layer + (band ? " band " + band : ""), name: "layer " + layer,
                  kind: "axis", color: "#fff"}, classes: "axis", locked: true, selectable: false, grabbable: false,
                  position: columns() ? {x: -1.6 * CELL, y: band * bandRows(g) * ROW - (layer + 1) * ROW}
                                      : {x: (layer + 1) * COLUMN, y: -0.9 * ROW}});
        }
      }
    });
  }

  function wanted() {
    // The edges to draw: the top `size` of the shown graph, and in the diff view the top `size` of the other.
    var a = entries(state.graph).slice(0, state.size), out = {};
    a.forEach(function (x) { out[x.key] = {x: x, side: "a"}; });
    if (state.diff >= 0) {
      entries(state.diff).slice(0, state.size).forEach(function (x) {
        out[x.key] = out[x.key] ? {x: out[x.key].x, other: x, side: "both"} : {x: x, side: "b"};
      });
    }
    return out;
  }

  function redrawEdges() {
    var want = wanted(), drawn = {}, limit = 1e-12;
    Object.keys(want).forEach(function (k) { limit = Math.max(limit, Math.abs(want[k].x.score)); });
    cy.batch(function () {
      var gone = cy.edges().filter(function (e) { if (want[e.id()]) { drawn[e.id()] = e; return false; } return true; });
      cy.remove(gone);
      var add = [];
      Object.keys(want).forEach(function (k) {
        var w = want[k], x = w.x, color = state.diff < 0 ? (x.score >= 0 ? "#2166ac" : "#b2182b")
          : {a: "#e66101", b: "#5e3c99", both: "#333333"}[w.side];
        var d = {id: k, source: x.s, target: x.r, from: x.from, to: x.to, at: x.at, score: x.score, side: w.side,
                 input: x.input || "",
                 width: 0.5 + 3.5 * Math.abs(x.score) / limit, color: color,
                 line: x.input ? INPUT_STYLE[x.input] : "solid", arrow: x.input ? INPUT_ARROW[x.input] : "triangle",
                 bend: bend(x)};
        if (drawn[k]) drawn[k].data(d); else add.push({group: "edges", data: d});
      });
      cy.add(add);
      cy.edges().toggleClass("fast", cy.edges().length > FAST);
      var touched = {};
      cy.edges().forEach(function (e) { touched[e.data("source")] = touched[e.data("target")] = true; });
      graphNodesDrawn().forEach(function (n) {
        n.toggleClass("outside", !touched[n.id()] && !n.hasClass("special"));
      });
    });
    applyFocus();
    report(want);
  }

  function bend(x) {
    // Arcs instead of straight lines, so that an edge does not run through the heads between its ends; an
    // edge's q, k and v parts arc by different amounts, so the three stay apart.
    var a = cy.getElementById(x.s).position(), b = cy.getElementById(x.r).position();
    var span = Math.abs(columns() ? b.y - a.y : b.x - a.x) / STEP;
    var base = span <= 1 ? 6 : 10 + 6 * Math.min(span, 8);
    return base + (x.input ? 9 * INPUTS.indexOf(x.input) : 0);
  }

  // --- side panel ----------------------------------------------------------------------------------------
  function fmt(x) { return x === null || x === undefined ? "—" : Number(x).toPrecision(4); }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"}[c]; }); }

  function report(want) {
    var all = entries(state.graph).length, drawn = cy.edges().length;
    var nodes = graphNodesDrawn(), inside = nodes.filter(function (n) { return !n.hasClass("outside"); }).length;
    var g = GRAPHS[state.graph], effect = effectOf(state.graph), p = columns() ? g.positions : null;
    var where = p ? " at " + p.kind + " (" + p.labels.length + " columns)" : "";
    $("status").innerHTML = "<b>" + drawn + "</b> edges drawn (top " + state.size + " of " + all + " " +
      (effect ? "\u201c" + esc(effect) + "\u201d " : "") + "edges" + where + ", ranked " + (state.by === "absolute" ? "by |score|" : "by score") +
      "); " + inside + " of " + nodes.length + " nodes touch them." +
      (!p ? "" : p.totals[g.effects.indexOf(effect)] <= p.limit ? " This page holds all of them." :
        " This page holds the top " + p.limit + " edges at " + p.kind + " by |score| and by score, of the graph's " +
        p.totals[g.effects.indexOf(effect)] + " (<code>positional_edges</code>); the slider stops there.") +
      (drawn > FAST ? " Over " + FAST + " edges: plain straight lines (q, k and v not styled apart), to stay fast." : "");
    $("status").dataset.edges = drawn;
    $("status").dataset.nodes = nodes.length;
    var box = $("diff-counts");
    box.hidden = state.diff < 0;
    if (state.diff >= 0) {
      var c = {a: 0, b: 0, both: 0};
      Object.keys(want).forEach(function (k) { c[want[k].side] += 1; });
      box.dataset.onlyA = c.a; box.dataset.onlyB = c.b; box.dataset.both = c.both;
      box.innerHTML = "<h3>top " + state.size + " edges of each</h3><span class='a'>\u25A0 only in " + esc(g.label) + ": <b>" + c.a +
        "</b></span><br><span class='b'>\u25A0 only in " + esc(GRAPHS[state.diff].label) + ": <b>" + c.b +
        "</b></span><br><span class='both'>\u25A0 in both: <b>" + c.both + "</b></span>";
    }
    drawCurve();
  }

  function header() {
    var g = GRAPHS[state.graph], r = g.record;
    $("title").textContent = [g.label, r.task, r.model].filter(Boolean).join(" \u00b7 ");
    var parts = ["engine <code>" + esc(r.engine || "?") + "</code>", "task <code>" + esc(r.task || "?") + "</code>",
                 "model <code>" + esc(r.model || "?") + "</code>"];
    ["n", "seed", "version"].forEach(function (k) { if (r[k] !== undefined) parts.push(k + " " + esc(r[k])); });
    if (r.options) parts.push("options " + Object.keys(r.options).map(function (k) {
      return "<code>" + esc(k) + "=" + esc(JSON.stringify(r.options[k])) + "</code>"; }).join(" "));
    if (r.selection) parts.push("selection <code>" + esc(JSON.stringify(r.selection)) + "</code>");
    $("record").innerHTML = parts.join(" \u00b7 ");
    $("meaning").innerHTML = r.score ? "<b>score:</b> " + esc(r.score) : "";
    var split = columns() || (hasInputs(g) && state.inputs === "split");
    $("legend").innerHTML = "<h3>legend</h3>" +
      "<span class='chip' style='background:#2166ac'></span>helps <span class='chip' style='background:#f7f7f7'></span>0 " +
      "<span class='chip' style='background:#b2182b'></span>hurts (node: its score, on a scale to the largest |score|; " +
      "dashed border: not measured" + (columns() ? "; over all positions" : "") + ")<br>edge width: |score|; " +
      (state.diff >= 0 ? "colour: which graph's top edges it is in" : "colour: sign") +
      (split ? "<br><span class='swatch'></span>q <span class='swatch' style='border-top-style:dashed'></span>k " +
               "<span class='swatch' style='border-top-style:dotted'></span>v (the receiving head's input)" : "");
  }

  function showInfo(ele) {
    var rows = [], r = GRAPHS[state.graph].record;
    if (ele.isNode()) {
      var d = ele.data();
      rows.push(["node", "<b>" + esc(d.name) + "</b> (" + esc(d.kind) + ")"]);
      if (d.at !== undefined) rows.push(["at", at(d.at)]);
      if (d.layer !== null && d.layer !== undefined) rows.push(["layer", d.layer]);
      if (d.head !== null && d.head !== undefined) rows.push(["head", d.head]);
      rows.push(["score", "<span class='score'>" + fmt(d.score) + "</span>"]);
      rows.push(["edges drawn", ele.incomers("edge").length + " in, " + ele.outgoers("edge").length + " out"]);
    } else {
      var e = ele.data(), x = (entries(state.graph).filter(function (y) { return y.key === e.id; })[0]) || null;
      rows.push(["edge", "<b>" + esc(e.from) + " \u2192 " + esc(e.to) + (e.input ? " (" + e.input + ")" : "") + "</b>"]);
      if (e.at !== undefined) rows.push(["at", at(e.at)]);
      rows.push(["score", "<span class='score'>" + fmt(e.score) + "</span>"]);
      if (x) {
        var g = GRAPHS[state.graph], p = parts(g, x.e);
        rows.push(["rank", x.rank + " of " + entries(state.graph).length + (x.at !== undefined ? " in this page" : "")]);
        if (x.effect) rows.push(["effect", esc(x.effect)]);
        if (x.at !== undefined) rows.push(["at every position", fmt(x.input ? p[x.input] : g.edges.score[x.e])]);
        else if (x.input) rows.push(["edge (inputs together)", fmt(g.edges.score[x.e])]);
        if (x.at === undefined) INPUTS.forEach(function (i) { if (p[i] !== undefined) rows.push([i, fmt(p[i])]); });
      }
      if (state.diff >= 0) rows.push(["in", {a: "only " + GRAPHS[state.graph].label, b: "only " + GRAPHS[state.diff].label, both: "both"}[e.side]]);
    }
    $("info").innerHTML = "<table>" + rows.map(function (row) { return "<tr><td>" + row[0] + "</td><td class='num'>" + row[1] + "</td></tr>"; }).join("") +
      "</table>" + (r.score ? "<p class='hint'>score: " + esc(r.score) + "</p>" : "");
  }

  function at(label) {  // "span end", "token 5"
    return esc(GRAPHS[state.graph].positions.kind === "tokens" ? "token " + label : "span " + label);
  }

  // --- faithfulness curve (curve.js draws it) ------------------------------------------------------------
  function drawCurve() {
    var g = GRAPHS[state.graph], box = $("curve-box");
    box.hidden = !g.curve;
    if (!g.curve) return;
    var total = g.edgeTotal || entries(state.graph).length;
    var split = !columns() && (state.inputs === "split" || !hasInputs(g));  // the curve counts plain edges, q, k, v apart
    var drawn = window.circuitCurve(g.curve, {by: state.by, size: state.size, total: total, split: split, fmt: fmt, esc: esc,
      unplaced: columns() ? "choose positions: summed to place this circuit on the curve (the curve counts edges at every position)" : null});
    $("curve").innerHTML = drawn.svg;
    $("curve-text").innerHTML = drawn.text;
    Array.prototype.forEach.call(document.querySelectorAll("#curve .point"), function (c) {
      c.addEventListener("click", function () { setSize(Math.floor(Number(c.dataset.fraction) * total)); });
    });
  }

  // --- interaction -------------------------------------------------------------------------------------------
  function applyFocus() {
    cy.batch(function () {
      cy.nodes().removeClass("focus");
      if (!state.focus || cy.getElementById(state.focus).empty()) {
        state.focus = null;
        cy.edges().removeClass("hidden");
        return;
      }
      var node = cy.getElementById(state.focus);
      node.addClass("focus");
      var keep = node.connectedEdges();
      cy.edges().addClass("hidden");
      keep.removeClass("hidden");
    });
  }

  function setSize(k) {
    var total = entries(state.graph).length;
    state.size = Math.max(0, Math.min(total, Math.round(k)));
    $("size").value = state.size;
    $("size-number").value = state.size;
    redrawEdges();
  }

  function resetGraph() {
    var total = entries(state.graph).length;
    $("size").max = total;
    $("size-number").max = total;
    var g = GRAPHS[state.graph];
    $("inputs-box").hidden = columns() || (!hasInputs(g) && (state.diff < 0 || !hasInputs(GRAPHS[state.diff])));
    $("positions-box").hidden = !g.positions || (state.diff >= 0 && !GRAPHS[state.diff].positions);
    if (g.positions) $("positions").options[0].textContent = "columns, one per " + (g.positions.kind === "tokens" ? "token" : "span");
    var effects = g.effects.filter(function (x) { return x !== null; });
    $("effect-box").hidden = effects.length < 2;
    $("effect").innerHTML = effects.map(function (x) { return "<option>" + esc(x) + "</option>"; }).join("");
    $("effect").value = effectOf(state.graph);
    header();
    rebuildNodes();
    setSize(state.size === null ? Math.min(total, DATA.defaultEdges) : state.size);
  }

  function search() {
    var q = $("search").value.trim().toLowerCase(), hits = cy.collection();
    cy.nodes().removeClass("found");
    if (q) hits = graphNodesDrawn().filter(function (n) { return n.id().toLowerCase().indexOf(q) >= 0; });
    hits.addClass("found");
    $("found").textContent = q ? hits.length + (hits.length === 1 ? " node" : " nodes") : "";
    $("found").dataset.count = hits.length;
    if (hits.length === 1) { cy.center(hits); showInfo(hits[0]); }
  }

  GRAPHS.forEach(function (g, i) {
    $("graph").insertAdjacentHTML("beforeend", "<option value='" + i + "'>" + esc(g.label) + "</option>");
    $("diff").insertAdjacentHTML("beforeend", "<option value='" + i + "'>" + esc(g.label) + "</option>");
  });
  $("diff").parentNode.hidden = GRAPHS.length < 2;
  $("graph").parentNode.hidden = GRAPHS.length < 2;
  $("by").value = state.by;
  $("graph").addEventListener("change", function () { state.graph = Number(this.value); state.focus = null; resetGraph(); fit(); });
  $("diff").addEventListener("change", function () { state.diff = Number(this.value); if (state.diff === state.graph) state.diff = -1; this.value = state.diff; resetGraph(); });
  $("effect").addEventListener("change", function () { state.effect = this.value; resetGraph(); });
  $("inputs").addEventListener("change", function () { state.inputs = this.value; resetGraph(); });
  $("positions").addEventListener("change", function () { state.positions = this.value; state.focus = null; resetGraph(); fit(); });
  $("positions").value = state.positions;
  $("by").addEventListener("change", function () { state.by = this.value; setSize(state.size); });
  var pending = null;
  $("size").addEventListener("input", function () {
    var v = Number(this.value);
    $("size-number").value = v;
    if (pending) cancelAnimationFrame(pending);
    pending = requestAnimationFrame(function () { pending = null; setSize(v); });
  });
  $("size-number").addEventListener("change", function () { setSize(Number(this.value)); });
  $("search").addEventListener("input", search);
  cy.on("mouseover", "node, edge", function (ev) { ev.target.addClass("hover"); showInfo(ev.target); });
  cy.on("mouseout", "node, edge", function (ev) { ev.target.removeClass("hover"); });
  cy.on("tap", "node", function (ev) { state.focus = ev.target.id(); applyFocus(); showInfo(ev.target); });
  cy.on("tap", function (ev) { if (ev.target === cy) { state.focus = null; applyFocus(); } });

  function fit() {  // the whole graph, but no closer than 1.4x (a tiny graph would show huge nodes and edges)
    cy.resize();  // the header and controls are filled in by now: the panel's size may have changed
    cy.fit(undefined, 20);
    if (cy.zoom() > 1.4) { cy.zoom(1.4); cy.center(); }
  }
  resetGraph();
  fit();
  window.circuitView = {
    cy: cy, state: state, entries: entries, setSize: setSize,
    firstDrawMs: function () { return firstDraw; },
    stats: function () {
      return {nodes: graphNodesDrawn().length, edges: cy.edges().length,
              shownEdges: cy.edges().filter(function (e) { return !e.hasClass("hidden"); }).length,
              size: state.size, total: entries(state.graph).length};
    }
  };
})();
