/* ppaia dashboard: the topology (cytoscape, canvas renderer, positions computed by the server). Nodes
   are coloured by state; links are weighted by traffic or trust when the view says so. Labels are
   drawn on the canvas (as text) for small graphs only. */
(function (ppaia) {
  "use strict";
  const LABELS_UP_TO = 60; // nodes; above, no labels (the table names every peer)
  const spread = (n) => 40 * Math.sqrt(Math.max(n, 4)); // positions arrive in [-1, 1]; nodes keep their size

  function create(container, onSelect) {
    const cy = cytoscape({
      container,
      elements: [],
      layout: { name: "preset" },
      boxSelectionEnabled: false,
      autoungrabify: true,
      hideEdgesOnViewport: true,
      textureOnViewport: true,
      minZoom: 0.1,
      maxZoom: 8,
      style: [
        { selector: "node", style: {
          "background-color": "data(color)", width: "data(size)", height: "data(size)", label: "data(label)",
          "font-size": 9, "text-valign": "center", "text-halign": "center", color: "#fff",
          "text-outline-width": 1, "text-outline-color": "data(color)" } },
        { selector: "node:selected", style: { "border-width": 3, "border-color": "#f9a825" } },
        { selector: "edge", style: {
          width: "data(width)", "line-color": "#90a4ae", opacity: "data(opacity)", "curve-style": "haystack" } },
      ],
    });
    const graph = { cy, key: null, container };
    cy.on("tap", "node", (event) => onSelect && onSelect(event.target.data("peer")));
    return graph;
  }

  /** Show `view` (the view's graph, or null) with node colours from `rows` (the view's peer table). */
  function update(graph, view, rows) {
    const cy = graph.cy;
    if (!view) {
      cy.elements().remove();
      graph.key = null;
      return;
    }
    const stateOf = new Map();
    rows.id.forEach((id, k) => stateOf.set(id, rows.state[k]));
    const labels = view.nodes.length <= LABELS_UP_TO;
    const scale = spread(view.nodes.length);
    cy.batch(() => {
      if (graph.key !== view.key) {
        cy.elements().remove();
        cy.add(view.nodes.map((peer, k) => ({
          group: "nodes",
          data: { id: "n" + peer, peer, label: labels ? String(peer) : "", size: labels ? 24 : 10, color: "#cfd8dc" },
          position: { x: view.x[k] * scale, y: view.y[k] * scale },
        })));
      }
      const weights = view.weights;
      const top = weights && weights.length ? Math.max(...weights) : 0;
      const look = (k) => {
        const share = weights && top > 0 ? weights[k] / top : null;
        return {
          width: share === null ? 1 : 0.5 + 4.5 * share,
          opacity: share === null ? 0.6 : 0.15 + 0.85 * share,
        };
      };
      const ids = view.edges.map(([u, v]) => `e${u}-${v}`);
      const kept = new Set(ids);
      cy.edges().filter((edge) => !kept.has(edge.id())).remove();
      const added = [];
      ids.forEach((id, k) => {
        const edge = cy.getElementById(id);
        if (edge.nonempty()) edge.data(look(k)); // only its weight changed
        else added.push({ group: "edges", data: { id, source: "n" + view.edges[k][0], target: "n" + view.edges[k][1], ...look(k) } });
      });
      cy.add(added);
      cy.nodes().forEach((node) => {
        node.data("color", ppaia.states.color(stateOf.get(node.data("peer")) || "unknown"));
      });
    });
    if (graph.key !== view.key) {
      cy.fit(undefined, 20);
      graph.key = view.key;
    }
  }

  function select(graph, peer) {
    graph.cy.nodes().unselect();
    graph.cy.$id("n" + peer).select();
  }

  ppaia.graph = { create, update, select };
})(window.ppaia = window.ppaia || {});
