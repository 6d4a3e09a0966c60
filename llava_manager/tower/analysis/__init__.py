"""ManagerTower's analyses, behind `python -m llava_manager.tower budget|weights`:

- `budget.py`: paper Table VI, parameters and FLOPs of BridgeTower and the ManagerTower variants at BASE
  (`tower_budget`, `format_table`).
- `figures.py`: paper Fig. 7, the managers' aggregation weights averaged over a data set (`aggregation_weights`,
  `plot_aggregation_weights`, `write_weights_json`).
"""
