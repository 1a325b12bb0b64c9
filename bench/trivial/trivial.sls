# The floor of the benchmark: one managed file, applied like mas.
bench-trivial-file-managed:
  file.managed:
    - name: {{ pillar.get("bench_trivial_path") }}
    - contents: trivial
