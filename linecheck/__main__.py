from linecheck.cli import app

app(prog_name="linecheck")
