"""Instance variables: checking values against their declared type, and the ``{{ name }}``
placeholders of template files."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from lamina.errors import InvalidRequest
from lamina.formats.definition import PORT_NUMBERS, Appliance, VariableType

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_BOOLS = {"true": "true", "1": "true", "yes": "true", "false": "false", "0": "false", "no": "false"}


def check_value(type_: VariableType, value: str) -> str:
    """The canonical text of ``value`` as a ``type_`` (``bool``: ``true``/``false``;
    ``int``: decimal); raise InvalidRequest naming the type if it is not one."""
    text = value.strip()
    if type_ == "string":
        # One line: the config disk carries a variable per line (``name<TAB>value``).
        if not any(c in value for c in "\n\r\0"):
            return value
        raise InvalidRequest(f"{value!r} is not a valid string: it must be one line")
    if type_ == "int" and re.fullmatch(r"[+-]?[0-9]{1,18}", text):
        return str(int(text))
    if type_ == "bool" and text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    if type_ in ("ipv4", "ipv6"):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            if address.version == int(type_[-1]):
                return str(address)
    if type_ == "hostname":
        name = text.rstrip(".")
        if 0 < len(name) <= 253 and all(_LABEL.fullmatch(p) for p in name.split(".")):
            return name.lower()
    raise InvalidRequest(f"{value!r} is not a valid {type_}")


def resolve_variables(appliance: Appliance, given: Mapping[str, str]) -> dict[str, str]:
    """Every variable's value for one instance: ``given`` checked against the declared types,
    defaults filled in (``""`` for an optional variable without one). Raise InvalidRequest,
    naming each problem, for an unknown variable, a missing required one, a value of the
    wrong type, or a port's variable whose value is not a port number."""
    problems: list[str] = []
    values: dict[str, str] = {}
    for name, value in given.items():
        try:
            values[name] = check_value(appliance.variable(name).type, value)
        except InvalidRequest as exc:
            problems.append(f"variable {name}: {exc.message}")
    for variable in appliance.variables:
        if variable.name in given:
            continue
        if variable.required:
            problems.append(f"variable {variable.name} is required ({variable.type})")
        else:
            values[variable.name] = variable.default or ""
    for port_variable in dict.fromkeys(p.variable for p in appliance.ports if p.variable):
        number = values.get(port_variable)
        if number and int(number) not in PORT_NUMBERS:
            problems.append(f"variable {port_variable}: {number} is not a port number (1 to 65535)")
    if problems:
        raise InvalidRequest(
            f"appliance {appliance.name}: " + "; ".join(problems), problems=problems
        )
    return values


def template_names(text: str) -> set[str]:
    """The variable names a template's ``{{ name }}`` placeholders use."""
    return set(_PLACEHOLDER.findall(text))


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace each ``{{ name }}`` with its value; text that is not a placeholder (a lone
    ``{``, ``{{ not-a-name }}``) is kept as it is. Raise InvalidRequest for a name without a
    value."""
    missing = template_names(text) - set(values)
    if missing:
        raise InvalidRequest(f"no value for template variable(s) {', '.join(sorted(missing))}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
