from imgaudit.cli import run

run()
