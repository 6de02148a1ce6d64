"""Side-by-side CPU benchmarks of the deployed model (``ilora-export bench``)."""
