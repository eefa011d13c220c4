"""Optional features, each a thin layer over the six modules at the root: TensorBoard logs, exports to
other formats, the Hub model card, reading your own digit images, and the drawing demo's page."""
