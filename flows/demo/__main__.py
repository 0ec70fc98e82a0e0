"""``python -m prefect_pop3mail.flows.demo`` (what ``make demo`` runs)."""

from prefect_pop3mail.flows.demo import main

main()
