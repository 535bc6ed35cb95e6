"""``rerankd client`` argument parsing: --addr / --timeout before or after the subcommand."""

from cli.main import build_parser


def test_addr_and_timeout_are_accepted_on_either_side_of_the_subcommand():
    p = build_parser()
    after = p.parse_args(["client", "rerank", "--addr", "h:1", "--timeout", "3", "--user", "1", "--items", "5"])
    before = p.parse_args(["client", "--addr", "h:1", "--timeout", "3", "rerank", "--user", "1", "--items", "5"])
    default = p.parse_args(["client", "health"])
    assert (after.addr, after.timeout) == (before.addr, before.timeout) == ("h:1", 3.0)
    assert default.addr == "127.0.0.1:50051" and default.timeout == 10.0


def test_rerank_prints_whether_each_item_was_read_from_its_token_or_text(capsys):
    from cli.client import _rerank
    from server.api.pb import reranker_pb2 as pb

    class Stub:
        def Rerank(self, req, timeout):
            return pb.RerankResponse(model_name="reranker", model_version="3", items=[
                pb.ScoredItem(item_id="50", rank=1, score=2.0, scored_from=pb.SCORED_FROM_ID_TOKEN),
                pb.ScoredItem(item_id="new-1", rank=2, score=1.0, scored_from=pb.SCORED_FROM_TEXT),
                pb.ScoredItem(item_id="ghost", rank=3, unscored=True)])

    args = build_parser().parse_args(["client", "rerank", "--user", "1", "--items", "50,new-1,ghost"])
    _rerank(Stub(), pb, args)
    rows = {line.split()[1]: line.split()[3] for line in capsys.readouterr().out.splitlines()[2:5]}
    assert rows == {"50": "token", "new-1": "text", "ghost": "-"}


def test_tls_flags_are_accepted_on_either_side_of_the_subcommand():
    p = build_parser()
    after = p.parse_args(["client", "health", "--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "c.key",
                          "--server-name", "gw"])
    before = p.parse_args(["client", "--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "c.key",
                           "--server-name", "gw", "health"])
    plain = p.parse_args(["client", "rerank", "--user", "1", "--items", "5"])
    for a in (after, before):
        assert (a.tls_ca, a.tls_cert, a.tls_key, a.server_name) == ("ca.pem", "c.pem", "c.key", "gw")
    assert (plain.tls, plain.tls_ca, plain.tls_cert, plain.tls_key) == (False, "", "", "")


def test_a_missing_tls_file_is_an_error_naming_the_flag(tmp_path, capsys):
    import pytest

    from cli.client import _channel
    from cli.main import main
    from server.errors import InvalidArgument

    missing = str(tmp_path / "missing.pem")
    with pytest.raises(InvalidArgument) as err:
        _channel(build_parser().parse_args(["client", "health", "--tls-ca", missing]))
    assert err.value.field == "--tls-ca"
    assert main(["client", "health", "--tls-ca", missing]) == 2
    assert f"--tls-ca: cannot read {missing}" in capsys.readouterr().err


def test_forget_sends_the_user_and_prints_the_counts(capsys):
    from cli.client import _forget
    from server.api.pb import reranker_pb2 as pb

    sent = []

    class Stub:
        def ForgetUser(self, req, timeout):
            sent.append(req.user_id)
            return pb.ForgetUserResponse(events_removed=3, cached_scores_removed=12)

    args = build_parser().parse_args(["client", "forget", "user-9"])
    assert args.client_command == "forget"
    _forget(Stub(), pb, args)
    assert sent == ["user-9"]
    assert capsys.readouterr().out.strip() == "removed 3 events, 12 cached scores"
