// A form generated from a JSON Schema object: one input per property.
// Handles string, number, integer, boolean and enum properties (also when nullable, as
// pydantic writes `anyOf: [{type: X}, {type: "null"}]`), defaults and `required`; any
// other property is edited as JSON in a text area.

import { el } from "./format.js";

/** The non-null variant of a nullable schema, and whether null is allowed. */
function unwrap(schema) {
  const variants = schema.anyOf || schema.oneOf;
  if (Array.isArray(variants)) {
    const others = variants.filter((v) => v && v.type !== "null");
    if (others.length === 1) {
      return { schema: { ...schema, ...others[0], anyOf: undefined, oneOf: undefined }, nullable: others.length < variants.length };
    }
    return { schema, nullable: others.length < variants.length };
  }
  if (Array.isArray(schema.type)) {
    const types = schema.type.filter((t) => t !== "null");
    return { schema: { ...schema, type: types.length === 1 ? types[0] : types }, nullable: types.length < schema.type.length };
  }
  return { schema, nullable: false };
}

function kindOf(schema) {
  if (Array.isArray(schema.enum)) return "enum";
  if (schema.const !== undefined) return "enum";
  if (["string", "number", "integer", "boolean"].includes(schema.type)) return schema.type;
  return "json";
}

let counter = 0;

/**
 * Build the inputs of `schema` (`{type: "object", properties, required}`) into `container`
 * (its previous content is replaced). Returns `{read()}`: `read()` gives
 * `{values, errors}`, marking invalid inputs; empty optional inputs are left out.
 */
export function buildForm(container, schema) {
  const legend = container.querySelector("legend");
  container.replaceChildren(...(legend ? [legend] : []));
  const properties = (schema && schema.properties) || {};
  const required = new Set((schema && schema.required) || []);
  const fields = [];
  const names = Object.keys(properties);
  if (names.length === 0) {
    container.append(el("p", { className: "muted hint" }, "No params: this pipeline runs as configured."));
  }
  for (const name of names) {
    const { schema: prop, nullable } = unwrap(properties[name] || {});
    const kind = kindOf(prop);
    const id = `param-${name.replace(/[^A-Za-z0-9_-]/g, "_")}-${++counter}`;
    const hintId = `${id}-hint`;
    const errorId = `${id}-error`;
    const isRequired = required.has(name);
    const title = prop.title || name;
    const hintText = [prop.description, prop["x-path"] ? `sets ${prop["x-path"]}` : null].filter(Boolean).join(" · ");
    const hint = el("p", { className: "muted hint", id: hintId }, hintText);
    const error = el("p", { className: "field-error", id: errorId, role: "alert" });
    const described = `${hintId} ${errorId}`;
    const def = prop.default;
    let input;
    const wrapper = el("div", { className: "field", dataset: { param: name } });
    if (kind === "boolean") {
      input = el("input", { type: "checkbox", id, name, "aria-describedby": described });
      input.checked = def === true;
      wrapper.append(el("label", { className: "check", for: id }, input, title), hint, error);
    } else {
      if (kind === "enum") {
        input = el("select", { id, name, "aria-describedby": described });
        const options = Array.isArray(prop.enum) ? prop.enum : [prop.const];
        if (!isRequired || nullable) input.append(el("option", { value: "" }, "(pipeline's value)"));
        options.forEach((option, index) => {
          const node = el("option", { value: String(index) }, option === null ? "null" : String(option));
          if (def !== undefined && JSON.stringify(def) === JSON.stringify(option)) node.selected = true;
          input.append(node);
        });
        input.enumValues = options;
      } else if (kind === "integer" || kind === "number") {
        input = el("input", { type: "number", id, name, inputMode: kind === "integer" ? "numeric" : "decimal", "aria-describedby": described });
        input.step = kind === "integer" ? "1" : "any";
        if (typeof prop.minimum === "number") input.min = String(prop.minimum);
        if (typeof prop.maximum === "number") input.max = String(prop.maximum);
        if (typeof def === "number") input.value = String(def);
      } else if (kind === "string") {
        input = el("input", { type: "text", id, name, autocomplete: "off", spellcheck: false, "aria-describedby": described });
        if (typeof prop.maxLength === "number") input.maxLength = prop.maxLength;
        if (typeof def === "string") input.value = def;
      } else {
        input = el("textarea", { id, name, spellcheck: false, "aria-describedby": described });
        if (def !== undefined) input.value = JSON.stringify(def, null, 1);
      }
      if (isRequired) input.required = true;
      const label = el("label", { for: id }, title);
      if (isRequired) label.append(el("span", { className: "required", "aria-hidden": "true" }, "*"));
      wrapper.append(label, input, hint, error);
    }
    container.append(wrapper);
    fields.push({ name, kind, prop, nullable, isRequired, input, error });
  }
  return {
    read() {
      const values = {};
      const errors = [];
      for (const field of fields) {
        const problem = readField(field, values);
        field.error.textContent = problem || "";
        field.input.setAttribute("aria-invalid", problem ? "true" : "false");
        if (problem) errors.push(`${field.name}: ${problem}`);
      }
      return { values, errors };
    },
  };
}

function readField({ name, kind, prop, isRequired, input }, values) {
  if (kind === "boolean") {
    values[name] = input.checked;
    return null;
  }
  const raw = input.value;
  if (raw.trim() === "") {
    return isRequired ? "required" : null;
  }
  if (kind === "enum") {
    values[name] = input.enumValues[Number(raw)];
    return null;
  }
  if (kind === "integer" || kind === "number") {
    const value = Number(raw);
    if (!Number.isFinite(value)) return "not a number";
    if (kind === "integer" && !Number.isInteger(value)) return "must be a whole number";
    if (typeof prop.minimum === "number" && value < prop.minimum) return `must be ≥ ${prop.minimum}`;
    if (typeof prop.maximum === "number" && value > prop.maximum) return `must be ≤ ${prop.maximum}`;
    if (typeof prop.exclusiveMinimum === "number" && value <= prop.exclusiveMinimum) return `must be > ${prop.exclusiveMinimum}`;
    if (typeof prop.exclusiveMaximum === "number" && value >= prop.exclusiveMaximum) return `must be < ${prop.exclusiveMaximum}`;
    values[name] = value;
    return null;
  }
  if (kind === "string") {
    if (typeof prop.minLength === "number" && raw.length < prop.minLength) return `at least ${prop.minLength} characters`;
    if (typeof prop.pattern === "string") {
      try {
        if (!new RegExp(prop.pattern, "u").test(raw)) return `must match ${prop.pattern}`;
      } catch {
        // a pattern JavaScript cannot read: the server validates it
      }
    }
    values[name] = raw;
    return null;
  }
  try {
    values[name] = JSON.parse(raw);
  } catch {
    return "not valid JSON";
  }
  return null;
}
