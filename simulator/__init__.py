"""The exchange simulator: a deterministic multi-venue market model and a loopback server that
speaks Binance spot, Binance USDⓈ-M and Coinbase Advanced Trade on one port."""

from simulator.market import SCENARIOS, MarketModel, Premium
from simulator.server import Simulator

__all__ = ["SCENARIOS", "MarketModel", "Premium", "Simulator"]
