"""Appliance definitions: STORM's Figure 2, Lamina's layered additions, versions, variables,
and refusal of hostile or wrong XML with errors naming line and element."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from lamina.errors import InvalidRequest
from lamina.formats.definition import Appliance, Port, Requirement
from lamina.formats.parsing import parse_appliance
from lamina.formats.variables import check_value, render, resolve_variables, template_names
from lamina.formats.versions import Version, VersionRange, compare_versions
from lamina.formats.writing import write_appliance
from lamina.formats.xmlsafe import XMLInvalid

FIGURE_2 = Path(__file__).parent / "fixtures" / "storm-figure2.xml"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "appliances.md"
SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "channel"
SHA = "ab" * 32


def layered(body: str, kind: str = "application", head: str = "") -> bytes:
    """A definition with ``body`` after the STORM fields (``head`` before them)."""
    return (
        f'<?xml version="1.0"?>\n<appliance version="1.0" name="app" kind="{kind}">\n'
        f"  <label>App</label>\n  <version>1.0</version>\n{head}{body}</appliance>\n"
    ).encode()


LAYER = f'  <layers>\n    <layer format="squashfs" sha256="{SHA}" size="4096"/>\n  </layers>\n'
SUBSTRATE = '  <substrate name="debian" version=">=12,&lt;13"/>\n'


def refused(data: bytes, source: bool = False) -> XMLInvalid:
    with pytest.raises(XMLInvalid) as info:
        parse_appliance(data, source=source)
    return info.value


# -- STORM's Figure 2 ------------------------------------------------------------------------


def test_storm_figure_2_parses_as_is() -> None:
    appliance = parse_appliance(FIGURE_2.read_bytes())
    assert appliance.name == "webserv"
    assert appliance.kind == "traditional"
    assert appliance.label == "Simple Web Server"
    assert appliance.description == "A very simple and efficient test web server."
    assert appliance.version == Version.parse("1.0.0-0")
    assert appliance.size_mib == 1024
    assert appliance.url == "http://cs.colorado.edu/appliances/webserv.tgz"
    assert appliance.sig == "http://cs.colorado.edu/appliances/webserv.asc"
    assert appliance.provides == ("webserv",)
    assert appliance.webpanel == "/upload.php"
    hardware = appliance.hardware
    assert hardware is not None
    assert (hardware.cpus, hardware.memory_kib, hardware.memory_mib) == (1, 524288, 512)
    assert hardware.ostype == "linux"
    assert [(d.name, d.type, d.file, d.size_mib) for d in hardware.disks] == [
        ("hda1", "system", "sys.img", None),
        ("hda3", "swap", None, 128),
        ("hda2", "user", None, 128),
    ]
    assert [str(d) for d in appliance.dependencies] == ["emailserv:1.0.0-0", "firewall"]
    assert appliance.blobs() == ()


def test_figure_2_as_typeset_in_the_paper_is_not_xml() -> None:
    # The paper prints the declaration's quotes as U+2019: no XML parser accepts that.
    typeset = FIGURE_2.read_text().replace("'", "\u2019").encode()
    error = refused(typeset)
    assert error.line == 1
    assert "not well-formed" in error.message


def test_writing_and_reading_give_the_same_appliance() -> None:
    figure_2 = parse_appliance(FIGURE_2.read_bytes())
    assert parse_appliance(write_appliance(figure_2)) == figure_2
    full = parse_appliance(_docs_examples()[1])
    assert full.kind == "application" and len(full.variables) == 3 and len(full.ports) == 2
    assert parse_appliance(write_appliance(full)) == full


def _docs_examples() -> list[bytes]:
    blocks = re.findall(r"```xml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    return [b.encode() for b in blocks if "<appliance" in b]


def test_every_example_in_the_docs_parses() -> None:
    examples = _docs_examples()
    assert len(examples) == 3
    for example in examples:
        parse_appliance(example, source=b'source="' in example)


# -- layered appliances ----------------------------------------------------------------------


def test_a_layered_application() -> None:
    variables = (
        "  <variables>\n"
        '    <variable name="domain" type="hostname" required="true" description="Mail domain"/>\n'
        '    <variable name="relay" type="ipv4" default="10.0.0.1"/>\n'
        '    <variable name="tls" type="bool" default="yes"/>\n'
        "  </variables>\n"
        '  <templates>\n    <template path="/etc/mailname"/>\n  </templates>\n'
    )
    a = parse_appliance(layered(SUBSTRATE + LAYER + variables))
    assert a.substrate == Requirement("debian", VersionRange.parse(">=12,<13"))
    assert a.layers[0].format == "squashfs" and a.layers[0].sha256 == SHA
    assert a.layers[0].size == 4096 and a.layers[0].source is None
    assert [(v.name, v.type, v.default, v.required) for v in a.variables] == [
        ("domain", "hostname", None, True),
        ("relay", "ipv4", "10.0.0.1", False),
        ("tls", "bool", "true", False),  # defaults are stored canonical
    ]
    assert a.templates == ("/etc/mailname",)


def test_a_substrate_boots_its_own_kernel_and_initrd() -> None:
    boot = (
        f'  <boot>\n    <kernel sha256="{SHA}" size="10"/>\n'
        f'    <initrd sha256="{"cd" * 32}" size="20"/>\n    <cmdline>quiet</cmdline>\n  </boot>\n'
    )
    a = parse_appliance(layered(LAYER + boot, kind="substrate"))
    assert [b.role for b in a.blobs()] == ["layer", "kernel", "initrd"]
    assert a.cmdline == "quiet"


def test_a_traditional_appliance_ships_one_image() -> None:
    image = f'  <image format="qcow2" sha256="{SHA}" size="1048576"/>\n'
    a = parse_appliance(layered(image, kind="traditional"))
    assert a.image is not None and a.image.format == "qcow2"
    assert a.blobs() == (a.image,)


def test_source_form_names_paths_instead_of_digests() -> None:
    body = SUBSTRATE + '  <layers>\n    <layer format="erofs" source="layer"/>\n  </layers>\n'
    a = parse_appliance(layered(body), source=True)
    assert a.layers[0].source == "layer" and a.layers[0].sha256 is None
    error = refused(layered(body))
    assert (error.line, error.element) == (7, "layer")
    assert "sha256 and size" in error.message
    assert (
        "channel build"
        in refused(
            layered(SUBSTRATE + LAYER.replace('size="4096"', 'size="4096" source="x"'))
        ).message
    )
    escape = body.replace('source="layer"', 'source="../../etc"')
    assert "leaves the appliance folder" in refused(layered(escape), source=True).message
    assert "source path" in refused(layered(SUBSTRATE + LAYER), source=True).message


@pytest.mark.parametrize(
    ("kind", "body", "line", "element", "words"),
    [
        ("application", LAYER, 2, "appliance", "names its <substrate>"),
        ("application", SUBSTRATE, 2, "appliance", "needs <layers>"),
        ("substrate", LAYER, 2, "appliance", "needs <boot> with its kernel and initrd"),
        ("substrate", SUBSTRATE + LAYER, 5, "substrate", "builds on no substrate"),
        ("traditional", LAYER, 5, "layers", "ships one <image>"),
        (
            "application",
            SUBSTRATE + LAYER + f'  <image format="raw" sha256="{SHA}" size="1"/>\n',
            9,
            "image",
            "made of layers",
        ),
        (
            "application",
            SUBSTRATE + LAYER + f'  <boot><kernel sha256="{SHA}" size="1"/></boot>\n',
            9,
            "boot",
            "boots its substrate's kernel",
        ),
    ],
)
def test_each_kind_has_its_rules(kind: str, body: str, line: int, element: str, words: str) -> None:
    error = refused(layered(body, kind=kind))
    assert (error.line, error.element) == (line, element)
    assert words in error.message


# -- wrong content: line and element ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "line", "element", "words"),
    [
        (
            "  <hardware>\n    <cpus>two</cpus>\n  </hardware>\n",
            6,
            "cpus",
            "'two' is not a valid positiveInteger",
        ),
        ("  <hardware>\n    <memory>-1</memory>\n  </hardware>\n", 6, "memory", "must be positive"),
        ("  <bogus/>\n", 5, "bogus", "Unexpected child with tag 'bogus'"),
        ('  <layers>\n    <layer format="zip"/>\n  </layers>\n', 6, "layer", "format='zip'"),
        (
            '  <layers>\n    <layer format="squashfs" sha256="xyz" size="1"/>\n  </layers>\n',
            6,
            "layer",
            "sha256='xyz'",
        ),
        ('  <substrate name="debian" version=">=twelve"/>\n', 5, "substrate", "'twelve'"),
        ("  <dependency>mail:~1</dependency>\n", 5, "dependency", "not a version"),
        (
            '  <variables>\n    <variable name="a"/>\n    <variable name="a"/>\n  </variables>\n',
            7,
            "variable",
            "a second variable with name 'a'",
        ),
        (
            '  <variables>\n    <variable name="p" type="int" default="eighty"/>\n  </variables>\n',
            6,
            "variable",
            "default 'eighty' is not a valid int",
        ),
        (
            '  <variables>\n    <variable name="p" required="true" default="1"/>\n  </variables>\n',
            6,
            "variable",
            "a required variable cannot have a default",
        ),
        (
            '  <variables>\n    <variable name="p" type="float"/>\n  </variables>\n',
            6,
            "variable",
            "float",
        ),
    ],
)
def test_wrong_content_names_line_and_element(
    body: str, line: int, element: str, words: str
) -> None:
    error = refused(layered(body, kind="traditional"))
    assert (error.line, error.element) == (line, element), error.message
    assert words in error.message
    assert error.message.startswith(f"appliance XML, line {line}, <{element}>: ")
    assert error.status == 400 and error.details == {"line": line, "element": element}


def test_namespaced_attributes_cannot_steer_the_schema() -> None:
    xsi = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    hardware = f'  <hardware {xsi}>\n    <cpus xsi:type="xs:string">two</cpus>\n  </hardware>\n'
    error = refused(layered(hardware, kind="traditional"))
    assert (error.line, error.element) == (6, "cpus")
    assert "namespaced elements and attributes" in error.message


def test_missing_fields_and_wrong_root() -> None:
    error = refused(b'<appliance version="1.0">\n  <version>1</version>\n</appliance>')
    assert (error.line, error.element) == (2, "version")
    assert "Tag 'label' expected" in error.message
    assert "'foo' is not an element" in refused(b"<foo/>").message
    assert (
        "version='2.0'" in refused(b'<appliance version="2.0"><label>x</label></appliance>').message
    )
    nameless = b'<appliance version="1.0"><label>x</label><version>1</version></appliance>'
    assert "needs a name" in refused(nameless).message


# -- hostile and malformed XML ---------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<appliance version="1.0"><label>&lol3;</label><version>1</version></appliance>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE appliance [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<appliance version="1.0"><label>&xxe;</label><version>1</version></appliance>
"""


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["laughs", "xxe"])
def test_dtds_and_entities_are_refused(document: bytes) -> None:
    error = refused(document)
    assert error.line == 2
    assert "DTDs and entity declarations are not allowed" in error.message
    assert "root:" not in error.message  # nothing of /etc/passwd


def test_undeclared_entity_and_malformed_xml_name_the_line() -> None:
    error = refused(b'<appliance version="1.0">\n<label>&xxe;</label>\n</appliance>')
    assert (error.line, "undefined entity") == (2, error.reason.split(": ")[1])
    error = refused(b'<appliance version="1.0">\n<label>x</label>\n<version>1</label>\n')
    assert error.line == 3 and "mismatched tag" in error.message
    assert refused(b"").line == 1
    error = refused(b'<?xml version="1.0" encoding="utf-J"?>\n<appliance/>')
    assert error.line == 1 and "unknown encoding" in error.message


def test_a_huge_document_is_refused_before_parsing() -> None:
    error = refused(b"<appliance>" + b" " * (1024 * 1024) + b"</appliance>")
    assert "more than the 1048576 allowed" in error.message


# -- ports -----------------------------------------------------------------------------------

PORT_VARIABLES = (
    "  <variables>\n"
    '    <variable name="port" type="int" default="8080"/>\n'
    '    <variable name="admin" type="int" required="true"/>\n'
    '    <variable name="domain" type="hostname"/>\n'
    "  </variables>\n"
)


def ported(ports: str, variables: str = PORT_VARIABLES) -> bytes:
    """A traditional appliance with ``variables`` (from line 5) and ``ports``."""
    return layered(variables + f"  <ports>\n{ports}  </ports>\n", kind="traditional")


def test_ports_fixed_or_from_a_variable() -> None:
    a = parse_appliance(
        ported(
            '    <port number="53" protocol="udp" name="domain" description="Queries"/>\n'
            '    <port number="53"/>\n'
            '    <port variable="port" name="http"/>\n'
            '    <port variable="admin" protocol="tcp"/>\n'
        )
    )
    assert a.ports == (
        Port(number=53, protocol="udp", name="domain", description="Queries"),
        Port(number=53, protocol="tcp"),  # tcp unless said
        Port(variable="port", name="http"),
        Port(variable="admin"),
    )
    assert [str(p) for p in a.ports] == ["53/udp", "53/tcp", "{port}/tcp", "{admin}/tcp"]
    # A variable's port is numbered by its default, or an instance's value; none without.
    assert [a.port_number(p) for p in a.ports] == [53, 53, 8080, None]
    values = {"port": "8443", "admin": "9000", "domain": ""}
    assert [a.port_number(p, values) for p in a.ports] == [53, 53, 8443, 9000]
    assert parse_appliance(write_appliance(a)) == a
    assert b'<port variable="port" protocol="tcp" name="http" />' in write_appliance(a)
    assert parse_appliance(layered("", kind="traditional")).ports == ()


@pytest.mark.parametrize(
    ("port", "words"),
    [
        ('<port number="0"/>', "attribute number='0': value must be positive"),
        ('<port number="65536"/>', "number='65536': value has to be less than or equal than 65535"),
        ('<port number="http"/>', "'http' is not a valid positiveInteger"),
        ('<port number="80" protocol="sctp"/>', "protocol='sctp'"),
        ('<port number="80" name="two words"/>', "name='two words'"),
        ("<port/>", "a port has either a number or a variable"),
        ('<port number="80" variable="port"/>', "a port has either a number or a variable"),
        (
            '<port variable="nope"/>',
            "port variable 'nope' is not one of the <variables> (they are: port, admin, domain)",
        ),
        ('<port variable="domain"/>', "port variable 'domain' is a hostname: a port's variable"),
    ],
)
def test_wrong_ports_name_line_and_element(port: str, words: str) -> None:
    error = refused(ported(f'    <port number="25"/>\n    {port}\n'))
    assert (error.line, error.element) == (12, "port"), error.message
    assert words in error.message, error.message


def test_a_port_once_per_protocol_and_a_variable_that_is_a_port_number() -> None:
    twice = refused(ported('    <port number="53" protocol="udp"/>\n    <port number="53"/>\n'
                           '    <port number="53" protocol="udp"/>\n'))  # fmt: skip
    assert (twice.line, twice.element) == (13, "port")
    assert "a second port 53/udp" in twice.message
    again = refused(ported('    <port variable="port"/>\n    <port variable="port"/>\n'))
    assert "a second port {port}/tcp" in again.message
    zero = '  <variables>\n    <variable name="port" type="int" default="0"/>\n  </variables>\n'
    error = refused(ported('    <port variable="port"/>\n', zero))
    assert (error.line, error.element) == (9, "port")
    assert "port variable 'port' defaults to 0, not a port number (1 to 65535)" in error.message
    undeclared = refused(ported('    <port variable="port"/>\n', ""))
    assert "(they are: none)" in undeclared.message


def test_an_instance_port_variable_must_be_a_port_number() -> None:
    a = parse_appliance(
        ported('    <port variable="port"/>\n    <port variable="port" protocol="udp"/>\n')
    )
    assert resolve_variables(a, {"admin": "1", "port": "65535"})["port"] == "65535"
    with pytest.raises(InvalidRequest) as info:
        resolve_variables(a, {"admin": "1", "port": "99999"})
    assert info.value.details["problems"] == [
        "variable port: 99999 is not a port number (1 to 65535)"  # said once for both ports
    ]


def test_the_sample_applications_declare_their_ports() -> None:
    declared: dict[str, list[str]] = {}
    for path in sorted(SAMPLES.glob("*/appliance.xml")):
        a = parse_appliance(path.read_bytes(), source=True)
        declared[a.name] = [f"{a.port_number(p)}/{p.protocol}" for p in a.ports]
    assert declared == {
        "diskprobe": [],
        "dnsserv": ["53/udp", "53/tcp"],
        "mailserv": ["25/tcp"],
        "netprobe": [],
        "ticker": [],
        "webserv": ["80/tcp"],  # its port variable's default
    }


# -- versions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0.0-0", "1.0.1-0"),
        ("1.0.0-0", "1.0.0-1"),
        ("12", "12.5"),
        ("12.5", "13"),
        ("2.0~rc1", "2.0"),
        ("1.9", "1.10"),
        ("1.0", "1.0a"),
        ("1.0a", "1.0+b1"),
        ("9.9", "1:0.1"),
    ],
)
def test_versions_order_as_debian(older: str, newer: str) -> None:
    assert compare_versions(older, newer) < 0 < compare_versions(newer, older)
    assert Version.parse(older) < Version.parse(newer)


def test_equal_versions_hash_alike() -> None:
    for a, b in [("1.0.0-0", "1.0.0"), ("1.01", "1.1"), ("0:2", "2")]:
        assert Version.parse(a) == Version.parse(b)
        assert hash(Version.parse(a)) == hash(Version.parse(b))
    assert Version.parse("1.0") != Version.parse("1")


def test_version_ranges() -> None:
    twelve = VersionRange.parse(">=12,<13")
    assert [twelve.contains(v) for v in ("11.9", "12", "12.99~beta", "13~rc1", "13")] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert VersionRange.parse("1.0.0-0").contains("1.0.0")
    assert VersionRange.parse("").contains("0.1")
    assert VersionRange.parse("!=2, >1").contains("3") and not VersionRange.parse("!=2").contains(
        "2"
    )
    assert str(VersionRange.parse(" >= 12 , < 13")) == ">=12,<13"
    for bad in ("=>12", ">=12,,<13", "twelve", ">="):
        with pytest.raises(InvalidRequest):
            VersionRange.parse(bad)


def test_requirements_are_satisfied_by_name_or_provides() -> None:
    figure_2 = parse_appliance(FIGURE_2.read_bytes())
    email = dataclasses.replace(figure_2, name="postfix", provides=("emailserv", "smtp"))
    emailserv, firewall = figure_2.dependencies
    assert email.satisfies(emailserv)
    assert not dataclasses.replace(email, version=Version.parse("1.0.1-0")).satisfies(emailserv)
    assert not email.satisfies(firewall)
    assert email.satisfies(Requirement.parse("postfix:>=1"))
    assert str(Requirement.parse("debian:>=12,<13")) == "debian:>=12,<13"


# -- variables and templates -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "value", "canonical"),
    [
        ("string", " any thing ", " any thing "),
        ("int", "080", "80"),
        ("int", "-3", "-3"),
        ("bool", "Yes", "true"),
        ("bool", "0", "false"),
        ("ipv4", "192.0.2.1", "192.0.2.1"),
        ("ipv6", "2001:DB8::1", "2001:db8::1"),
        ("hostname", "Mail.Foo.com.", "mail.foo.com"),
    ],
)
def test_variable_values_are_checked_and_made_canonical(
    type_: str, value: str, canonical: str
) -> None:
    assert check_value(type_, value) == canonical  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("type_", "value"),
    [
        ("int", "1.5"),
        ("bool", "maybe"),
        ("ipv4", "2001:db8::1"),
        ("ipv4", "300.1.1.1"),
        ("ipv6", "192.0.2.1"),
        ("hostname", "-bad.example"),
        ("hostname", "a" * 64 + ".example"),
        ("hostname", "under_score.example"),
    ],
)
def test_wrong_variable_values_are_refused(type_: str, value: str) -> None:
    with pytest.raises(InvalidRequest, match=f"is not a valid {type_}"):
        check_value(type_, value)  # type: ignore[arg-type]


def _mail() -> Appliance:
    body = (
        SUBSTRATE
        + LAYER
        + "  <variables>\n"
        + '    <variable name="domain" type="hostname" required="true"/>\n'
        + '    <variable name="port" type="int" default="25"/>\n'
        + '    <variable name="banner"/>\n'
        + "  </variables>\n"
    )
    return parse_appliance(layered(body))


def test_resolving_variables_fills_defaults() -> None:
    values = resolve_variables(_mail(), {"domain": "Mail.Foo.com"})
    assert values == {"domain": "mail.foo.com", "port": "25", "banner": ""}


def test_resolving_variables_names_every_problem() -> None:
    with pytest.raises(InvalidRequest) as info:
        resolve_variables(_mail(), {"port": "smtp", "colour": "blue"})
    message = info.value.message
    assert "variable port: 'smtp' is not a valid int" in message
    assert "appliance app has no variable 'colour' (it has: domain, port, banner)" in message
    assert "variable domain is required (hostname)" in message
    assert info.value.status == 400


def test_templates_render_declared_placeholders_only() -> None:
    text = 'myhostname = {{ domain }}\nport={{port}}\njson = {"a": {{ not-a-name }}}\n'
    assert template_names(text) == {"domain", "port"}
    rendered = render(text, {"domain": "mail.foo.com", "port": "25"})
    assert rendered == 'myhostname = mail.foo.com\nport=25\njson = {"a": {{ not-a-name }}}\n'
    with pytest.raises(InvalidRequest, match="port"):
        render(text, {"domain": "x"})
