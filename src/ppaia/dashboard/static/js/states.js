/* ppaia dashboard: what each peer state looks like (shared by the topology, the table and the legend). */
(function (ppaia) {
  "use strict";
  const COLORS = {
    training: "#2e7d32",
    mixing: "#1565c0",
    waiting: "#8d99a6",
    starting: "#b0bec5",
    behind: "#f9a825",
    dropped: "#c62828",
    banned: "#6a1b9a",
    attacker: "#e65100",
    finished: "#00838f",
    unknown: "#cfd8dc",
  };

  function color(state) {
    return COLORS[state] || COLORS.unknown;
  }

  /** The legend of the states present (with their counts) into the list `container`. */
  function legend(container, states) {
    const counts = new Map();
    for (const state of states) counts.set(state, (counts.get(state) || 0) + 1);
    const items = [];
    for (const state of Object.keys(COLORS)) {
      if (!counts.has(state)) continue;
      const swatch = ppaia.dom.el("span", { class: "swatch" });
      swatch.style.background = color(state);
      items.push(ppaia.dom.el("li", { "data-state": state }, [swatch, `${state} ${counts.get(state)}`]));
    }
    container.replaceChildren(...items);
  }

  /** A coloured badge naming a state. */
  function badge(state) {
    const node = ppaia.dom.el("span", { class: "state", text: state, "data-state": state });
    node.style.background = color(state);
    return node;
  }

  ppaia.states = { COLORS, color, legend, badge };
})(window.ppaia = window.ppaia || {});
