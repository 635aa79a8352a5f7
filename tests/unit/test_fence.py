"""The private-address fence's nft script, exact text, and when it is needed."""

from ballast.agent import fence


def test_a_real_hosts_loopback_needs_no_fence() -> None:
    assert not fence.needed("127.0.0.1")
    assert fence.needed("127.128.21.2")


def test_the_ruleset_replaces_its_own_table_and_admits_only_the_hosts_loopback_source() -> None:
    assert fence.ruleset("127.128.21.2") == (
        "table ip ballast_fence_127_128_21_2\n"
        "delete table ip ballast_fence_127_128_21_2\n"
        "table ip ballast_fence_127_128_21_2 {\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        "    ip daddr 127.128.21.2 ip saddr != 127.0.0.1 meta l4proto tcp reject with tcp reset\n"
        "    ip daddr 127.128.21.2 ip saddr != 127.0.0.1 drop\n"
        "  }\n"
        "}\n")
