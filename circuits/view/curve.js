// The faithfulness-curve panel of the circuit viewer (circuits/view): an SVG of MIB's curve with the view's circuit
// on it. Loaded before viewer.js, which calls window.circuitCurve.
(function () {
  "use strict";
  window.circuitCurve = function (curve, o) {
    // MIB's curve: faithfulness of the circuit of int(f * total) top edges (then pruned) at each fraction f of the
    // model's edges, q, k and v apart; the series of ranking `o.by`, and random circuits' where given. Returns the
    // SVG's content and the text under it; `o`: by, size (edges in the view's circuit), total (the model's edges),
    // split (whether the view counts edges as the curve does; if not, `unplaced` says why), fmt and esc (the viewer's number and text helpers).
    var fmt = o.fmt, esc = o.esc, state = {by: o.by, size: o.size};
    var series = curve[state.by], other = state.by === "signed" ? "absolute" : "signed", shown = state.by;
    if (!series) { series = curve[other]; shown = other; }
    var pair = function (ys) { return ys ? curve.fractions.map(function (f, i) { return [f, ys[i]]; }) : null; };
    var pts = pair(series), rand = curve.random ? pair(curve.random[shown] || curve.random.signed || curve.random.absolute) : null;
    var total = o.total, here = o.split && total ? state.size / total : null;
    var positive = curve.fractions.filter(function (x) { return x > 0; });
    var low = Math.min.apply(null, positive.concat(here > 0 ? [here] : [])), useLog = low < 0.02;
    var X = function (f) {
      if (!useLog) return 36 + 214 * f;
      var lo = Math.log10(low);
      return f <= 0 ? 36 : 36 + 214 * (Math.log10(Math.max(f, low)) - lo) / (0 - lo || 1);
    };
    var ys = pts.concat(rand || []).map(function (p) { return p[1]; }).filter(function (y) { return y !== null; }).concat([0, 1]);
    var ylo = Math.min.apply(null, ys), yhi = Math.max.apply(null, ys);
    var Y = function (v) { return 150 - 135 * (v - ylo) / ((yhi - ylo) || 1); };
    var line = function (p, colour, dash) {
      return "<polyline fill='none' stroke='" + colour + "' stroke-width='1.5'" + (dash ? " stroke-dasharray='4,3'" : "") +
        " points='" + p.filter(function (q) { return q[1] !== null; }).map(function (q) { return X(q[0]) + "," + Y(q[1]); }).join(" ") + "'/>";
    };
    var svg = "<line x1='36' y1='150' x2='250' y2='150' stroke='#999'/><line x1='36' y1='15' x2='36' y2='150' stroke='#999'/>" +
      "<line x1='36' x2='250' y1='" + Y(1) + "' y2='" + Y(1) + "' stroke='#ccc' stroke-dasharray='3,3'/>" +
      "<text x='2' y='" + (Y(1) + 4) + "' font-size='9'>1</text><text x='2' y='" + (Y(0) + 4) + "' font-size='9'>0</text>" +
      "<text x='140' y='166' font-size='9' text-anchor='middle'>fraction of the model's edges" + (useLog ? " (log)" : "") + "</text>";
    if (rand) svg += line(rand, "#999", true);
    svg += line(pts, "#2166ac", false);
    pts.forEach(function (p) {
      if (p[1] === null) return;
      svg += "<circle class='point' data-fraction='" + p[0] + "' cx='" + X(p[0]) + "' cy='" + Y(p[1]) + "' r='3.5' fill='#2166ac'><title>" +
        (100 * p[0]).toPrecision(3) + "% of edges (" + Math.floor(p[0] * total) + "): faithfulness " + fmt(p[1]) + "</title></circle>";
    });
    var value = here === null ? {f: null, exact: false} : at(pts, here);
    if (here !== null) svg += "<line x1='" + X(here) + "' x2='" + X(here) + "' y1='15' y2='150' stroke='#f1a340' stroke-width='2'/>";
    if (value.f !== null) svg += "<circle cx='" + X(here) + "' cy='" + Y(value.f) + "' r='4.5' fill='#f1a340'/>";
    var text = (here === null ? "<i>" + (o.unplaced || "choose inputs: q / k / v apart to place this circuit on the curve " +
        "(the curve counts edges that way)") + "</i>"
      : "this circuit: " + state.size + " of " + total + " edges (" + (100 * here).toPrecision(3) + "%), faithfulness " +
        (value.f === null ? "—" : (value.exact ? "" : "\u2248 ") + fmt(value.f)) + (value.exact ? " (measured)" : " (between measured sizes)")) +
      "<br>circuits ranked " + (shown === "signed" ? "by score" : "by |score|") + (shown !== state.by ? " (not measured ranked as the view is)" : "") +
      (rand ? "; dashed: random circuits" : "") +
      "<br>CPR " + fmt(curve.cpr) + " \u00b7 CMD " + fmt(curve.cmd) +
      (curve.random ? " (random: CPR " + fmt(curve.random.cpr) + " \u00b7 CMD " + fmt(curve.random.cmd) + ")" : "") +
      "<br><span class='hint'>a measured circuit is its top edges pruned to input \u2192 read-out paths; click a point to show that many top edges</span>";
    return {svg: svg, text: text};
  };

  function at(pts, f) {
    // Faithfulness at fraction f: the measured value at a measured size, else the straight line between the
    // two measured sizes around it (said so in the text).
    var ok = pts.filter(function (p) { return p[1] !== null; });
    for (var i = 0; i < ok.length; i++) if (Math.abs(ok[i][0] - f) < 1e-9) return {f: ok[i][1], exact: true};
    for (i = 1; i < ok.length; i++) {
      if (ok[i - 1][0] < f && f < ok[i][0]) {
        var t = (f - ok[i - 1][0]) / (ok[i][0] - ok[i - 1][0]);
        return {f: ok[i - 1][1] + t * (ok[i][1] - ok[i - 1][1]), exact: false};
      }
    }
    return {f: null, exact: false};
  }
})();
