"""The directory of remote nodes (``oxidip.nodes``): parsing OXIDIP_PACS_ADDRESS, looking AE
titles up, and the one AE title rule that every AE title of the configuration follows."""

import pytest

from oxidip.config import Config, ConfigError
from oxidip.nodes import InvalidAeTitle, NodeDirectory, RemoteNode, check_ae_title

# --- parsing OXIDIP_PACS_ADDRESS ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", {}),
        ("   ", {}),
        ("PACS=pacs.example.org:104", {"PACS": RemoteNode("PACS", "pacs.example.org", 104)}),
        (
            "A=10.0.0.1:4242,B=localhost:11112",
            {
                "A": RemoteNode("A", "10.0.0.1", 4242),
                "B": RemoteNode("B", "localhost", 11112),
            },
        ),
        (
            " A = host:1 , B=h2:65535 ",
            {"A": RemoteNode("A", "host", 1), "B": RemoteNode("B", "h2", 65535)},
        ),
        ("V6=[::1]:104", {"V6": RemoteNode("V6", "::1", 104)}),
        ("V6=[fe80::1:2]:11112", {"V6": RemoteNode("V6", "fe80::1:2", 11112)}),
        ("MY PACS=host:104", {"MY PACS": RemoteNode("MY PACS", "host", 104)}),
        ("ABCDEFGHIJKLMNOP=h:1", {"ABCDEFGHIJKLMNOP": RemoteNode("ABCDEFGHIJKLMNOP", "h", 1)}),
    ],
)
def test_parse_accepts(value: str, expected: dict[str, RemoteNode]) -> None:
    assert NodeDirectory.parse(value) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("PACS", "no '='"),
        ("PACS=host", "no ':port'"),
        ("PACS=host:", "not a number"),
        ("PACS=host:abc", "not a number"),
        ("PACS=host:0", "not in 1-65535"),
        ("PACS=host:65536", "not in 1-65535"),
        ("PACS=host:-1", "not a number"),
        ("=host:104", "empty AE title"),
        ("PACS=:104", "empty host"),
        ("ABCDEFGHIJKLMNOPQ=host:104", "at most 16"),
        ("PA\\CS=host:104", "without backslash"),
        ("PACS=ho st:104", "spaces"),
        ("A=h:1,,B=h:2", "empty entry"),
        ("A=h:1,", "empty entry"),
        ("A=h:1,A=h:2", "given twice"),
        ("V6=::1:104", "in brackets"),
        ("V6=[::1:104", "unclosed"),
        ("V6=[::1]104", "no ':port'"),
        ("V6=[not-v6]:104", "not an IPv6 address"),
        ("V6=[::1]:", "not a number"),
    ],
)
def test_parse_rejects(value: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        NodeDirectory.parse(value)
    message = str(info.value)
    assert says in message
    assert "AET=host:port" in message, f"the accepted form is not in {message!r}"


# --- looking up ---------------------------------------------------------------------------


def test_lookup_ignores_padding_and_keeps_the_node() -> None:
    directory = NodeDirectory.parse("PACS=10.0.0.5:104, CT 1 =[::1]:11112")
    assert directory["PACS  "] == RemoteNode("PACS", "10.0.0.5", 104)
    assert directory.get(" CT 1") == RemoteNode("CT 1", "::1", 11112)
    assert directory.get("OTHER") is None
    assert sorted(directory) == ["CT 1", "PACS"]
    assert str(directory["CT 1"]) == "CT 1 at [::1]:11112"
    assert str(directory["PACS"]) == "PACS at 10.0.0.5:104"


def test_only_spaces_is_no_ae_title() -> None:
    with pytest.raises(InvalidAeTitle, match="empty or only spaces"):
        check_ae_title("    ")


def test_a_mapping_becomes_a_directory() -> None:
    """A node may be known by another title than its own (the calling AE of a sender whose
    archive answers as another AE)."""
    archive = RemoteNode("ARCHIVE", "pacs.example.org", 104)
    directory = NodeDirectory({"MODALITY ": archive})
    assert directory["MODALITY"] is archive
    assert len(directory) == 1


# --- one AE title rule --------------------------------------------------------------------

TITLES = [
    ("A", "A"),
    ("ABCDEFGHIJKLMNOP", "ABCDEFGHIJKLMNOP"),
    ("  MY AE  ", "MY AE"),
    ("lower-case_ok.1", "lower-case_ok.1"),
    ("ABCDEFGHIJKLMNOPQ", "17 characters long, at most 16"),
    ("BACK\\SLASH", "backslash"),
    ("TAB\tAE", "not a printable ASCII character"),
    ("\u00c4RZTE", "not a printable ASCII character"),
]


@pytest.mark.parametrize(("title", "outcome"), TITLES)
def test_every_ae_title_of_the_configuration_follows_one_rule(title: str, outcome: str) -> None:
    """Our AE title, the allowed calling AE titles and the AE titles of the node directory
    accept and refuse the same titles, for the same reason."""
    try:
        checked = check_ae_title(title)
    except InvalidAeTitle as error:
        assert outcome in str(error)
        for variable, value in (
            ("OXIDIP_SCP_AET", title),
            ("OXIDIP_ALLOWED_CALLING_AETS", f"PACS,{title}"),
            ("OXIDIP_PACS_ADDRESS", f"{title}=host:104"),
        ):
            with pytest.raises(ConfigError, match=outcome):
                Config.from_env({variable: value})
        return
    assert checked == outcome
    config = Config.from_env(
        {
            "OXIDIP_SCP_AET": title,
            "OXIDIP_ALLOWED_CALLING_AETS": f"PACS,{title}",
            "OXIDIP_PACS_ADDRESS": f"{title}=host:104",
        }
    )
    assert config.scp_aet == outcome
    assert config.allowed_calling_aets == ("PACS", outcome)
    assert NodeDirectory.parse(config.pacs_address)[outcome] == RemoteNode(outcome, "host", 104)
