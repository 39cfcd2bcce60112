/* ppaia dashboard: DOM helpers. Every string enters the page as text (textContent, text nodes,
   attribute values): nothing a run or a peer reports is ever parsed as markup. */
(function (ppaia) {
  "use strict";

  /** A new element: props.text is its text, props.class its class, on* props listeners, any other
      prop an attribute (a plain value); children are nodes or strings (strings become text nodes). */
  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function setText(node, value) {
    node.textContent = value === undefined || value === null ? "" : String(value);
  }

  /** A count for a table cell: "–" for none. */
  function integer(value) {
    return value === null || value === undefined ? "–" : value.toLocaleString("en");
  }

  /** A measured value for a table cell or caption: "–" for none, `digits` decimals (default 4), or
      exponent notation for very small or large ones. */
  function number(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    const d = digits === undefined ? 4 : digits;
    const size = Math.abs(value);
    if (size !== 0 && (size < 1e-3 || size >= 1e6)) return value.toExponential(2);
    return value.toFixed(d);
  }

  function bytes(value) {
    if (value === null || value === undefined) return "–";
    const units = ["B", "kB", "MB", "GB", "TB"];
    let v = value, k = 0;
    while (Math.abs(v) >= 1000 && k < units.length - 1) { v /= 1000; k += 1; }
    return (k ? v.toFixed(1) : String(Math.round(v))) + " " + units[k];
  }

  ppaia.dom = { el, setText, integer, number, bytes };
})(window.ppaia = window.ppaia || {});
