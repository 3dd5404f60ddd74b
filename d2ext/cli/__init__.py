"""The command-line tools (tools/*.py run these): train, demo, benchmarks, converters, curation."""
