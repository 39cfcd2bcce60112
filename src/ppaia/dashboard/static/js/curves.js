/* ppaia dashboard: curves over rounds (uPlot). A chart per group of metrics present in the view's
   curves; a dashed line marks the round shown. */
(function (ppaia) {
  "use strict";
  const GROUPS = [
    { name: "test accuracy", keys: ["acc_mean", "acc_min", "acc_max", "honest_acc_mean"], range: [0, 1] },
    { name: "consensus distance (1/N)Σ‖θᵢ−θ̄‖²", keys: ["consensus_distance"], log: true },
    { name: "bytes sent (cumulative)", keys: ["bytes_cumulative"], format: (v) => ppaia.dom.bytes(v) },
    { name: "privacy spent ε", keys: ["epsilon_mean", "epsilon_max"] },
  ];
  const STYLE = {
    acc_mean: { label: "mean", stroke: "#1565c0", width: 2 },
    acc_min: { label: "min", stroke: "#90a4ae", width: 1 },
    acc_max: { label: "max", stroke: "#90a4ae", width: 1, dash: [4, 3] },
    honest_acc_mean: { label: "honest mean", stroke: "#2e7d32", width: 2 },
    consensus_distance: { label: "distance", stroke: "#6a1b9a", width: 2 },
    bytes_cumulative: { label: "bytes", stroke: "#00838f", width: 2 },
    epsilon_mean: { label: "mean ε", stroke: "#e65100", width: 2 },
    epsilon_max: { label: "max ε", stroke: "#c62828", width: 1 },
  };

  const ROUND_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];

  function markerPlugin(chart) {
    return {
      hooks: {
        draw: [(u) => {
          if (chart.round === null || chart.round === undefined) return;
          const x = u.valToPos(chart.round, "x", true);
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#d32f2f";
          ctx.setLineDash([5, 4]);
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.restore();
        }],
      },
    };
  }

  function create(container) {
    return { container, charts: new Map() };
  }

  function options(group, keys, chart, width) {
    const y = group.log ? { distr: 3 } : group.range ? { range: group.range } : {};
    return {
      width,
      height: 170,
      plugins: [markerPlugin(chart)],
      scales: { x: { time: false }, y },
      axes: [{ label: "round", incrs: ROUND_STEPS }, group.format ? { values: (u, ticks) => ticks.map(group.format), size: 70 } : {}],
      // a curve measured in some rounds only (a swarm's distance, its peers' reports) is drawn through them
      series: [{ label: "round" }, ...keys.map((key) => ({ ...STYLE[key], spanGaps: true }))],
      legend: { live: true },
    };
  }

  /** Draw `curves` ({round: [...], series: {name: [...]}}) with the round `marked` highlighted. */
  function update(state, curves, marked) {
    const width = Math.max(280, state.container.clientWidth - 10);
    const seen = new Set();
    for (const group of GROUPS) {
      const keys = group.keys.filter((key) => curves.series[key]);
      if (!keys.length || !curves.round.length) continue;
      seen.add(group.name);
      const data = [curves.round, ...keys.map((key) => curves.series[key].map(
        (v) => (group.log && !(v > 0) ? null : v)))];
      let chart = state.charts.get(group.name);
      if (chart && chart.keys.join() !== keys.join()) {
        chart.plot.destroy();
        chart.box.remove();
        chart = undefined;
      }
      if (!chart) {
        chart = { keys, round: marked };
        chart.box = ppaia.dom.el("div", { class: "chart", "data-chart": group.name },
          [ppaia.dom.el("div", { class: "chart-title", text: group.name })]);
        state.container.append(chart.box);
        chart.plot = new uPlot(options(group, keys, chart, width), data, chart.box);
        state.charts.set(group.name, chart);
      } else {
        chart.round = marked;
        if (chart.plot.width !== width) chart.plot.setSize({ width, height: 170 });
        chart.plot.setData(data);
      }
    }
    for (const [name, chart] of state.charts) {
      if (seen.has(name)) continue;
      chart.plot.destroy();
      chart.box.remove();
      state.charts.delete(name);
    }
  }

  ppaia.curves = { create, update };
})(window.ppaia = window.ppaia || {});
