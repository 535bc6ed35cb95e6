"""``rerankd train`` / ``rerankd eval`` data-source options: clear errors (exit 2, one line, no
traceback) before any training starts, and the catalogue's rendered attributes."""

import pytest

from cli.main import main
from cli.train import catalogue_attributes
from contract.items import Item


@pytest.fixture(autouse=True)
def quiet_settings(monkeypatch):
    monkeypatch.setenv("RERANKD_CONFIG", "")


@pytest.mark.parametrize("command", ["train", "eval"])
def test_missing_file_is_one_clear_line(command, tmp_path, capsys):
    (tmp_path / "items.csv").write_text("item_id,title\np1,x\n")
    argv = [command, "--source", "files", "--interactions", str(tmp_path / "nope.csv"),
            "--items", str(tmp_path / "items.csv"), "--model-repository", str(tmp_path / "repo")]
    if command == "eval":
        argv += ["--version", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: --interactions: no such file: {tmp_path / 'nope.csv'}"


def test_empty_store_and_missing_column(tmp_path, capsys):
    repo = str(tmp_path / "repo")
    assert main(["train", "--source", "store", "--store", f"sqlite:///{tmp_path / 'empty.db'}",
                 "--model-repository", repo]) == 2
    assert "holds no items" in capsys.readouterr().err
    (tmp_path / "i.csv").write_text("user,item\nu,p1\n")
    (tmp_path / "items.csv").write_text("item_id,title\np1,x\n")
    assert main(["train", "--source", "files", "--interactions", str(tmp_path / "i.csv"),
                 "--items", str(tmp_path / "items.csv"), "--model-repository", repo]) == 2
    assert "no timestamp column" in capsys.readouterr().err
    assert main(["train", "--source", "files", "--model-repository", repo]) == 2
    assert "needs --interactions FILE and --items FILE" in capsys.readouterr().err


def test_compare_with_a_missing_version(tmp_path, capsys):
    (tmp_path / "i.csv").write_text("user,item,timestamp\nu,p1,1\n")
    (tmp_path / "items.csv").write_text("item_id,title\np1,x\n")
    assert main(["train", "--source", "files", "--interactions", str(tmp_path / "i.csv"), "--items",
                 str(tmp_path / "items.csv"), "--model-repository", str(tmp_path / "repo"),
                 "--compare-with", "7"]) == 2
    assert "no version 7 of reranker" in capsys.readouterr().err


def test_catalogue_attributes_usual_ones_first_then_by_frequency():
    items = [Item("a", "t", "", {"colour": "red", "brand": "X", "size": "L"}),
             Item("b", "t", "", {"colour": " ", "category": "c"}), Item("c", "t", "", {"colour": "", "size": "M"})]
    assert catalogue_attributes(items) == ("category", "brand", "size", "colour")
    assert catalogue_attributes([Item("a", "t", "", {"year": "1995", "genres": "Drama"})]) == ("year", "genres")
