# The two commands of the Quick start; everything else lives in scripts/dev.sh.
.PHONY: run test setup tools bench

run:
	@scripts/dev.sh run

test:
	@scripts/dev.sh test

setup:
	@scripts/dev.sh setup

tools:
	@scripts/dev.sh tools

bench:
	@scripts/dev.sh bench
