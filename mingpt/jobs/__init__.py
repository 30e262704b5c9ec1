"""The `mingpt` command's jobs, one module each, built only on the library: adder, chargpt,
prepare, train, words, sample, eval, bench, diloco. Each has get_config() -> CfgNode and
main(config); no job imports another: what they share is pipeline.py, and the recipes.py table."""
