/* ppaia dashboard: the per-peer table, sortable by any column and paginated (one page of rows is in
   the DOM at a time, so thousands of peers stay fast). Cells are text. */
(function (ppaia) {
  "use strict";
  const PAGE = 100;
  const COLUMNS = [
    { key: "label", name: "peer", text: true, sortBy: "id" },
    { key: "state", name: "state", text: true },
    { key: "round", name: "round", integer: true },
    { key: "accuracy", name: "accuracy" },
    { key: "loss", name: "loss" },
    { key: "epsilon", name: "ε spent" },
    { key: "samples", name: "samples", integer: true },
    { key: "rejections", name: "rejections", integer: true },
    { key: "bans", name: "bans", integer: true },
  ];

  function create(container, onSelect) {
    const table = { container, onSelect, sortKey: "id", descending: false, page: 0, rows: null, selected: null };
    return table;
  }

  function columnsOf(rows) {
    const extra = Object.keys(rows.extra || {}).map((key) => ({ key, name: key, extra: true }));
    return [...COLUMNS, ...extra, { key: "note", name: "note", text: true, note: true }];
  }

  function valuesOf(rows, column) {
    return column.extra ? rows.extra[column.key] : rows[column.sortBy || column.key];
  }

  function order(table, rows) {
    const columns = columnsOf(rows);
    const column = columns.find((c) => (c.sortBy || c.key) === table.sortKey) || columns[0];
    const values = valuesOf(rows, column);
    const indices = rows.id.map((_, k) => k);
    const sign = table.descending ? -1 : 1;
    indices.sort((a, b) => {
      const x = values[a], y = values[b];
      const xNone = x === null || x === undefined, yNone = y === null || y === undefined;
      if (xNone || yNone) return xNone === yNone ? rows.id[a] - rows.id[b] : xNone ? 1 : -1;
      if (x < y) return -sign;
      if (x > y) return sign;
      return rows.id[a] - rows.id[b];
    });
    return indices;
  }

  function cell(rows, column, k) {
    if (column.key === "state") return ppaia.dom.el("td", { class: "text" }, [ppaia.states.badge(rows.state[k])]);
    const value = column.extra ? rows.extra[column.key][k] : rows[column.key][k];
    const text = column.text ? String(value ?? "") : column.integer ? ppaia.dom.integer(value) : ppaia.dom.number(value);
    return ppaia.dom.el("td", { class: column.note ? "text note" : column.text ? "text" : "", text });
  }

  /** Show the peer table `rows` (the view's columns). */
  function update(table, rows) {
    table.rows = rows;
    const columns = columnsOf(rows);
    const indices = order(table, rows);
    const pages = Math.max(1, Math.ceil(indices.length / PAGE));
    table.page = Math.min(table.page, pages - 1);
    const shown = indices.slice(table.page * PAGE, (table.page + 1) * PAGE);
    const head = ppaia.dom.el("tr", {}, columns.map((column) => {
      const key = column.sortBy || column.key;
      const sorted = key === table.sortKey ? (table.descending ? "descending" : "ascending") : "none";
      return ppaia.dom.el("th", {
        class: column.text ? "text" : "", text: column.name, "aria-sort": sorted, "data-key": key,
        onclick: () => {
          table.descending = table.sortKey === key ? !table.descending : false;
          table.sortKey = key;
          update(table, table.rows);
        },
      });
    }));
    const body = shown.map((k) => ppaia.dom.el("tr", {
      "data-peer": rows.id[k], class: rows.id[k] === table.selected ? "selected" : "",
      onclick: () => table.onSelect && table.onSelect(rows.id[k]),
    }, columns.map((column) => cell(rows, column, k))));
    const first = indices.length ? table.page * PAGE + 1 : 0;
    const last = table.page * PAGE + shown.length;
    const pager = ppaia.dom.el("div", { class: "pager" }, [
      ppaia.dom.el("button", { text: "‹", disabled: table.page === 0 ? "" : null,
        onclick: () => { table.page -= 1; update(table, table.rows); } }),
      ppaia.dom.el("span", { class: "page-range",
        text: `peers ${first.toLocaleString("en")}–${last.toLocaleString("en")} of ${indices.length.toLocaleString("en")}` +
          (pages > 1 ? ` (${PAGE} a page)` : "") }),
      ppaia.dom.el("button", { text: "›", disabled: table.page >= pages - 1 ? "" : null,
        onclick: () => { table.page += 1; update(table, table.rows); } }),
    ]);
    const grid = ppaia.dom.el("table", { class: "peers" }, [
      ppaia.dom.el("thead", {}, [head]), ppaia.dom.el("tbody", {}, body)]);
    table.container.replaceChildren(pager, ppaia.dom.el("div", { class: "table-scroll" }, [grid]));
  }

  /** Mark peer `peer` and show the page that holds it. */
  function select(table, peer) {
    table.selected = peer;
    if (!table.rows) return;
    const position = order(table, table.rows).findIndex((k) => table.rows.id[k] === peer);
    if (position >= 0) table.page = Math.floor(position / PAGE);
    update(table, table.rows);
  }

  ppaia.table = { create, update, select, PAGE };
})(window.ppaia = window.ppaia || {});
