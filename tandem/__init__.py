"""The `tandem` program: the command-line dispatcher, above cloud/, edge/ and bench/."""
