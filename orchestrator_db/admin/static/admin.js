// Makes piccolo-admin's pages offer only what the server allows.
//
// piccolo-admin 1.14 has no per-table read-only mode, no display names and
// no password inputs in custom forms. The server refuses what an operator
// may not do (admin/app.py, POLICIES); this script, fed by the same policy
// at ./api/odb/ui/, makes the pages say so:
// - tables carry their labels (sidebar and headings);
// - Add, Save and Delete are hidden where they would be refused, and the
//   fields an operator may not change are disabled (so never sent);
// - "Add row" on credentials leads to the secrets form;
// - the secrets form's secret fields are password inputs that browsers do
//   not autofill or remember.
// It only hides and disables: the server's refusals stay the rule.
"use strict";

(function () {
  let policy = null;
  let loading = false;

  function readable(tableName) {
    return tableName.split("_").join(" ").toLowerCase();
  }

  function route() {
    // "#/user_credentials_admin/<id>/" -> ["user_credentials_admin", "<id>"]
    return window.location.hash.replace(/^#\/?/, "").split("?")[0].split("/").filter(Boolean);
  }

  function load() {
    if (policy || loading || route()[0] === "login") return;
    loading = true;
    // XMLHttpRequest, as the SPA's own requests are made.
    const request = new XMLHttpRequest();
    request.open("GET", "./api/odb/ui/");
    request.responseType = "json";
    request.onloadend = () => {
      loading = false;
      if (request.status === 200 && request.response) {
        policy = request.response;
        apply();
      }
    };
    request.send();
  }

  function hide(element) {
    if (element && element.style.display !== "none") element.style.display = "none";
  }

  function relabel() {
    // Longest first: "piccolo user" before "user".
    const names = Object.entries(policy.tables)
      .map(([name, table]) => [readable(name), table.label])
      .sort((a, b) => b[0].length - a[0].length);
    for (const element of document.querySelectorAll("#app h1, #app .table_list span")) {
      for (const node of element.childNodes) {
        if (node.nodeType !== Node.TEXT_NODE) continue;
        const text = node.nodeValue;
        const trimmed = text.trim();
        for (const [name, label] of names) {
          const at = trimmed.toLowerCase().lastIndexOf(name);
          if (at >= 0 && at + name.length === trimmed.length && (at === 0 || trimmed[at - 1] === " ")) {
            const updated = text.replace(trimmed, trimmed.slice(0, at) + label);
            if (updated !== text) node.nodeValue = updated;
            break;
          }
        }
      }
    }
  }

  function disableField(block) {
    for (const control of block.querySelectorAll("input, select, textarea, button")) {
      if (!control.disabled) control.disabled = true;
    }
    for (const link of block.querySelectorAll("label a.add")) hide(link);
  }

  function applyRowForm(table, adding) {
    const form = document.querySelector("#app form:not(#login form)");
    if (!form) return;
    const allowed = adding ? table.add : table.edit;
    for (const block of form.querySelectorAll(":scope > div > div")) {
      const names = [...block.querySelectorAll("[name]")].map((c) => c.getAttribute("name"));
      const editable = allowed && (adding || !table.editable || names.some((n) => table.editable.includes(n)));
      if (!editable) disableField(block);
    }
    if (!allowed) {
      hide(form.querySelector("[data-uitest=save_button], [data-uitest=create_button]"));
    }
  }

  function markExpired() {
    // A row whose expires_at has passed shows "expired" instead of its active tick.
    const headers = [...document.querySelectorAll(".table_wrapper table thead th")].map((th) =>
      th.textContent.trim().toLowerCase()
    );
    const active = headers.indexOf("is active");
    const expires = headers.indexOf("expires at");
    if (active < 0 || expires < 0) return;
    for (const row of document.querySelectorAll(".table_wrapper table tbody tr")) {
      const cells = row.children;
      const when = Date.parse((cells[expires] && cells[expires].textContent.trim()) || "");
      const state = !Number.isNaN(when) && when <= Date.now() ? "expired" : "";
      const cell = cells[active];
      if (cell && (cell.dataset.odbState || "") !== state) {
        if (state) cell.dataset.odbState = state;
        else delete cell.dataset.odbState;
      }
    }
  }

  function applyTable(tableName, rest) {
    const table = policy.tables[tableName];
    if (!table) return;
    if (table.shows_expiry) markExpired();
    if (!table.delete) {
      for (const link of document.querySelectorAll("[data-uitest=delete_row_button]")) hide(link.closest("li") || link);
      if (rest.length && rest[0] !== "add") hide(document.querySelector("[data-uitest=drop_down_button]"));
    }
    // Bulk delete is refused everywhere: no row selection.
    for (const box of document.querySelectorAll(".table_wrapper table tr > :first-child > input[type=checkbox]")) {
      hide(box);
    }
    const addButton = document.querySelector(`a.button[href="#/${tableName}/add/"]`);
    if (addButton) {
      if (table.add_instead) addButton.setAttribute("href", table.add_instead);
      else if (!table.add) hide(addButton);
    }
    if (rest[0] === "add") {
      if (table.add_instead) {
        window.location.replace(table.add_instead);
        return;
      }
      applyRowForm(table, true);
    } else if (rest.length) {
      applyRowForm(table, false);
    }
  }

  function applyForms() {
    for (const [slug, form] of Object.entries(policy.forms)) {
      if (!form.allowed) hide(document.querySelector(`#app a[href="#/forms/${slug}/"]`)?.closest("li"));
    }
  }

  function applyForm(slug) {
    const form = policy.forms[slug];
    if (!form) return;
    if (!form.allowed) {
      for (const control of document.querySelectorAll("#app form input, #app form select, #app form textarea")) {
        if (!control.disabled) control.disabled = true;
      }
      hide(document.querySelector("[data-uitest=submit_custom_form_button]"));
    }
    for (const name of form.secret_fields) {
      for (const input of document.querySelectorAll(`input[name="${name}"]`)) {
        if (input.type !== "password") input.type = "password";
        if (input.getAttribute("autocomplete") !== "new-password") input.setAttribute("autocomplete", "new-password");
        if (input.getAttribute("spellcheck") !== "false") input.setAttribute("spellcheck", "false");
      }
    }
  }

  function apply() {
    if (!policy) return;
    relabel();
    applyForms();
    const [first, ...rest] = route();
    if (first === "forms" && rest[0]) applyForm(rest[0]);
    else if (first) applyTable(first, rest);
  }

  let queued = false;
  function schedule() {
    if (queued) return;
    queued = true;
    window.requestAnimationFrame(() => {
      queued = false;
      if (route()[0] === "login") policy = null; // the next operator may differ
      if (policy) apply();
      else load();
    });
  }

  new MutationObserver(schedule).observe(document.documentElement, {
    childList: true,
    subtree: true,
    characterData: true,
  });
  window.addEventListener("hashchange", schedule);
  schedule();
})();
