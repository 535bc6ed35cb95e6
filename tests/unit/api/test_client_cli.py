"""``rerankd client`` argument parsing: --addr / --timeout before or after the subcommand."""

from server.cli import build_parser


def test_addr_and_timeout_are_accepted_on_either_side_of_the_subcommand():
    p = build_parser()
    after = p.parse_args(["client", "rerank", "--addr", "h:1", "--timeout", "3", "--user", "1", "--items", "5"])
    before = p.parse_args(["client", "--addr", "h:1", "--timeout", "3", "rerank", "--user", "1", "--items", "5"])
    default = p.parse_args(["client", "health"])
    assert (after.addr, after.timeout) == (before.addr, before.timeout) == ("h:1", 3.0)
    assert default.addr == "127.0.0.1:50051" and default.timeout == 10.0
