"""Pure scheduling logic: DAG checks, ready-task selection, phase rules and transition tables. No I/O."""
