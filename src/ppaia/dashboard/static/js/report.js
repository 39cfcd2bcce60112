/* ppaia report: draws the JSON document in <script id="ppaia-report"> (ppaia.report.document.Report).
   For several runs or a sweep, the comparison: curves per cell with 95% bands (report-bands.js) and the
   results table in Markdown and LaTeX. For the run chosen: its summary, the dashboard's curves, per-peer
   table and heat-map (js/curves.js, table.js, heatmap.js, drawn as the live page draws them), its loss and
   any other metric, and its config. Every string of the document is set as text, never as markup. */
(function (ppaia) {
  "use strict";

  const dom = ppaia.dom;
  const el = (tag, className, text, children) => dom.el(tag, { class: className || null, text }, children);
  const SUMMARY = ["round", "acc_mean", "acc_min", "acc_max", "acc_std", "honest_acc_mean", "loss_mean",
                   "consensus_distance", "bytes_cumulative", "epsilon_max", "forgetting", "wall_s", "setup_s"];
  const COMPARED = ["honest_acc_mean", "honest_loss_mean", "consensus_distance", "bytes_cumulative"];
  const NAMES = {
    honest_acc_mean: "test accuracy (honest peers' mean)",
    honest_loss_mean: "test loss (honest peers' mean)",
    acc_mean: "test accuracy (mean over peers)",
    loss_mean: "test loss (mean over peers)",
    consensus_distance: "consensus distance (1/N)Σ‖θᵢ−θ̄‖²",
    bytes_cumulative: "bytes sent (cumulative)",
  };
  const DASHBOARD_CURVES = new Set(["round", "acc_mean", "acc_min", "acc_max", "honest_acc_mean", "consensus_distance",
                                    "bytes_cumulative", "epsilon_mean", "epsilon_max"]);  // js/curves.js draws these
  const report = JSON.parse(document.getElementById("ppaia-report").textContent);
  const root = document.getElementById("report");
  const state = { report, charts: {} };
  ppaia.report = state;

  function section(id, title) {
    const node = el("section", "block");
    node.id = id;
    node.append(el("h2", "", title));
    root.append(node);
    return node;
  }

  function text(value) {
    return typeof value === "number" ? dom.number(value) : value === null || value === undefined ? "–" : String(value);
  }

  function table(columns, rows, className) {
    const head = el("tr", "", undefined, columns.map((column) => el("th", "", column)));
    const body = rows.map((row) => el("tr", "", undefined,
      row.map((entry) => el("td", typeof entry === "number" ? "number" : "", text(entry)))));
    return el("table", className, undefined, [el("thead", "", undefined, [head]), el("tbody", "", undefined, body)]);
  }

  function chart(container, id, spec) {
    state.charts[id] = ppaia.bands.chart(container, Object.assign({ id }, spec));
    return state.charts[id];
  }

  /* A chart of the metric chosen in a <select> of `names`, first `initial`. */
  function chooser(container, id, names, initial, draw) {
    if (!names.length) return;
    const select = el("select");
    select.setAttribute("aria-label", "metric");
    names.forEach((name) => select.append(Object.assign(el("option", "", name), { value: name })));
    select.value = names.includes(initial) ? initial : names[0];
    const holder = el("div");
    container.append(el("div", "chooser", undefined, [el("label", "", "metric: "), select, holder]));
    const redraw = () => { holder.replaceChildren(); draw(holder, id, select.value); };
    select.addEventListener("change", redraw);
    redraw();
  }

  function copyable(container, label, content) {
    const area = el("textarea");
    area.readOnly = true;
    area.wrap = "off";
    area.value = content;
    area.rows = Math.min(16, content.split("\n").length + 1);
    area.dataset.format = label;
    const button = el("button", "", "copy " + label);
    button.type = "button";
    button.addEventListener("click", () => {
      area.select();
      const done = () => {
        button.textContent = "copied";
        setTimeout(() => { button.textContent = "copy " + label; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(content).then(done, () => {});
      else if (document.execCommand("copy")) done();
    });
    container.append(el("div", "copyable", undefined, [el("h3", "", label), button, area]));
  }

  /* ---- comparison ---- */

  function band(curve, sign) {
    return curve.mean.map((m, i) => (m === null || curve.half[i] === null ? null : m + sign * curve.half[i]));
  }

  function comparisonCurves(container, id, metric) {
    const curves = report.comparison.curves[metric] || [];
    const lines = curves.map((curve) => {
      const spread = curve.half.some((h) => h !== null);
      return {
        label: curve.cell,
        colour: ppaia.bands.colour(report.comparison.cells.indexOf(curve.cell)),
        x: curve.x,
        values: curve.mean,
        low: spread ? band(curve, -1) : null,
        high: spread ? band(curve, 1) : null,
      };
    });
    const positive = curves.every((curve) => curve.mean.every((m) => m === null || m > 0));
    chart(container, id, {
      title: (NAMES[metric] || metric) + ": mean over seeds, 95% CI band",
      ylabel: metric,
      lines,
      ylim: metric.includes("acc") ? [0, 1] : null,
      log: metric === "consensus_distance" && positive,
    });
  }

  function drawComparison(comparison) {
    const node = section("comparison", "Comparison");
    const keys = comparison.keys.length ? comparison.keys.join(", ") : "nothing (the runs share their config)";
    node.append(el("p", "", `${comparison.cells.length} cells, varying ${keys}; ${comparison.runs.length} runs. ` +
      "Each curve is the mean over a cell's completed seeds; its band, the 95% confidence interval of that mean " +
      "(Student's t; none with one seed)."));
    const charts = el("div", "charts");
    node.append(charts);
    const shown = Array.from(new Set([...COMPARED, comparison.metric])).filter((m) => comparison.curves[m]);
    shown.forEach((metric) => comparisonCurves(charts, "comparison-" + metric, metric));
    const others = Object.keys(comparison.curves).filter((m) => !shown.includes(m));
    chooser(charts, "comparison-other", others, "acc_min", comparisonCurves);

    node.append(el("h3", "", "Results"));
    const results = table(comparison.table.columns, comparison.table.rows, "results");
    results.id = "results-table";
    node.append(results);
    const copies = el("div", "copies");
    copyable(copies, "Markdown", comparison.markdown);
    copyable(copies, "LaTeX", comparison.latex);
    node.append(copies);

    node.append(el("h3", "", "Runs"));
    const head = el("tr", "", undefined, ["cell", "seed", "status", comparison.metric, ""].map((name) => el("th", "", name)));
    const body = comparison.runs.map((ref) => {
      const show = el("button", "", "show run");
      show.type = "button";
      show.addEventListener("click", () => { selectRun(ref.run); document.getElementById("run").scrollIntoView(); });
      const value = report.runs[ref.run].summary[comparison.metric];
      return el("tr", "", undefined, [ref.cell, ref.seed, ref.status, text(value)].map((entry) => el("td", "", entry))
        .concat([el("td", "", undefined, [show])]));
    });
    node.append(el("table", "runs", undefined, [el("thead", "", undefined, [head]), el("tbody", "", undefined, body)]));
  }

  /* ---- one run ---- */

  function metricLine(run, label, column, spread) {
    const line = { label, x: run.metrics.round, values: run.metrics[column] };
    if (spread && run.metrics[spread[0]] && run.metrics[spread[1]]) {
      line.low = run.metrics[spread[0]];
      line.high = run.metrics[spread[1]];
    }
    return line;
  }

  function runMetric(run) {
    return (holder, id, column) => {
      const prefix = column.endsWith("_mean") ? column.slice(0, -5) : null;
      const lines = [metricLine(run, column === "loss_mean" ? "mean over peers (band: min–max)" : column, column,
                                prefix && [prefix + "_min", prefix + "_max"])];
      if (column === "loss_mean" && run.summary.attackers && run.summary.attackers.length && run.metrics.honest_loss_mean) {
        lines.push(metricLine(run, "mean over honest peers", "honest_loss_mean"));
      }
      chart(holder, id, { title: NAMES[column] || column, ylabel: column, lines, log: false });
    };
  }

  function heatMap(container, map) {
    const box = el("figure", "heat-map");
    box.dataset.heat = map.name;
    const canvas = el("canvas", "heat");
    const caption = el("p", "muted heat-caption");
    const slider = el("input", "heat-round");
    Object.assign(slider, { type: "range", min: "0", max: String(map.heats.length - 1), value: String(map.heats.length - 1) });
    slider.setAttribute("aria-label", "round");
    const label = el("div", "chart-title");
    box.append(label, canvas, caption);
    if (map.heats.length > 1) box.append(slider);
    if (map.heats.length < map.recorded) {
      box.append(el("p", "muted", `${map.heats.length} of the ${map.recorded} recorded rounds kept ` +
        "(evenly spaced, the last among them), to keep this file small"));
    }
    const show = (index) => {
      const heat = map.heats[index];
      ppaia.heatmap.draw(canvas, heat, caption);
      dom.setText(label, `${map.name} after round ${heat.round}` + (map.heats.length > 1 ? " (slide for other rounds)" : ""));
      box.dataset.round = String(heat.round);
    };
    slider.addEventListener("input", () => show(Number(slider.value)));
    container.append(box);
    show(map.heats.length - 1);
  }

  function provenance(summary) {
    const p = summary.provenance;
    if (!p || typeof p !== "object") return "";
    const versions = p.versions && typeof p.versions === "object"
      ? Object.entries(p.versions).map(([name, version]) => `${name} ${version}`).join(", ") : "";
    const git = p.git && typeof p.git === "object"
      ? ` · commit ${String(p.git.commit).slice(0, 12)}` + (p.git.dirty ? " (with uncommitted changes)" : "") : "";
    return `ran ${p.date || "?"} · ${versions}${git}`;
  }

  const runView = el("div", "run-view");

  function drawRun(run) {
    Object.keys(state.charts).filter((id) => id.startsWith("run-")).forEach((id) => delete state.charts[id]);
    runView.replaceChildren();
    runView.dataset.run = run.name;
    runView.append(el("h3", "run-name", run.name), el("p", "described", run.described), el("p", "muted", provenance(run.summary)));
    if (run.summary.provenance && run.summary.provenance.command) {
      runView.append(el("pre", "command", String(run.summary.provenance.command)));
    }
    const rows = SUMMARY.filter((key) => key in run.summary).map((key) => [key, run.summary[key]]);
    if (run.summary.diverged) rows.push(["diverged", JSON.stringify(run.summary.diverged)]);
    runView.append(table(["metric", "value"], rows, "summary"));

    runView.append(el("h3", "", "Curves"));
    const curves = el("div", "curves");
    runView.append(curves);
    const others = el("div", "charts");
    runView.append(others);
    const series = Object.fromEntries(Object.entries(run.metrics).filter(([name]) => name !== "round"));
    ppaia.curves.update(ppaia.curves.create(curves), { round: run.metrics.round, series }, null);
    const rest = Object.keys(run.metrics).filter((name) => !DASHBOARD_CURVES.has(name));
    chooser(others, "run-metric", rest, "loss_mean", runMetric(run));

    runView.append(el("h3", "", "Peers"));
    const peers = el("div", "peer-table");
    runView.append(peers);
    ppaia.table.update(ppaia.table.create(peers, null), run.peers);

    run.heat_maps.forEach((map) => {
      runView.append(el("h3", "", map.name === "trust" ? "Learned trust" : map.name));
      heatMap(runView, map);
    });
    const config = el("details", "config", undefined, [el("summary", "", "config.toml"), el("pre", "", run.config_toml)]);
    config.open = true;
    const full = el("details", "full-summary", undefined,
      [el("summary", "", "summary.json"), el("pre", "", JSON.stringify(run.summary, null, 2))]);
    runView.append(config, full);
  }

  let selector = null;

  function selectRun(index) {
    if (selector) selector.value = String(index);
    drawRun(report.runs[index]);
  }

  /* ---- the page ---- */

  document.title = "ppaia · " + report.title;
  root.append(el("header", "", undefined, [
    el("h1", "", "ppaia report · " + report.title),
    el("p", "muted", `from ${report.sources.join(", ")} · written by ppaia ${report.version} · ` +
      "self-contained: this file fetches nothing"),
  ]));
  if (report.comparison) drawComparison(report.comparison);
  const runSection = section("run", report.runs.length > 1 ? "Run" : "The run");
  if (report.runs.length > 1) {
    selector = el("select", "run-select");
    selector.setAttribute("aria-label", "run");
    report.runs.forEach((run, i) => selector.append(Object.assign(el("option", "", run.name), { value: String(i) })));
    selector.addEventListener("change", () => selectRun(Number(selector.value)));
    runSection.append(el("p", "", undefined, [el("label", "", "run: "), selector]));
  }
  runSection.append(runView);
  selectRun(0);
  document.body.dataset.ready = "true";
})(window.ppaia = window.ppaia || {});
