"""The partitioned engine's command buffer (dagnats/runtime/partitions.py `CommandBuffer`)
against a model, a plain list: interleaved puts, takes and partitions given up (a lost
partition's commands taken out at once) keep the order commands came in, per partition and
overall, and every command put is exactly once in the buffer, taken, or given back (never
held twice, never lost). And a taker waiting on an empty buffer wakes at a put, or at its
timeout with nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dagnats.runtime.partitions import CommandBuffer

PARTITIONS = 4
WAIT_S = 5.0  # a bound on the tests' waits; nothing here should come near it


@dataclass(frozen=True, eq=False)  # (identity: a command is itself, not its fields)
class Command:
    partition: int
    number: int


@dataclass
class Outcome:
    taken: list[Command] = field(default_factory=list)
    given_back: list[Command] = field(default_factory=list)


class BufferAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.buffer: CommandBuffer[Command] = CommandBuffer(lambda command: command.partition)
        self.model: list[Command] = []
        self.put_so_far: list[Command] = []
        self.out = Outcome()

    @rule(partition=st.integers(0, PARTITIONS - 1))
    def put(self, partition: int) -> None:
        command = Command(partition, len(self.put_so_far))
        self.buffer.put(command)
        self.model.append(command)
        self.put_so_far.append(command)

    @rule(count_max=st.integers(1, 6))
    def take(self, count_max: int) -> None:
        taken = self.buffer.take(count_max)
        assert taken == self.model[:count_max], (taken, self.model)
        self.model = self.model[count_max:]
        self.out.taken += taken

    @rule(partition=st.integers(0, PARTITIONS - 1))
    def lose_partition(self, partition: int) -> None:
        gone = self.buffer.take_partition(partition)
        assert gone == [c for c in self.model if c.partition == partition], (gone, self.model)
        self.model = [c for c in self.model if c.partition != partition]
        self.out.given_back += gone

    @rule()
    def take_all(self) -> None:
        taken = self.buffer.take_all()
        assert taken == self.model, (taken, self.model)
        self.model = []
        self.out.taken += taken

    @invariant()
    def held_is_the_model(self) -> None:
        assert self.buffer.held() == self.model, (self.buffer.held(), self.model)
        assert len(self.buffer) == len(self.model)

    @invariant()
    def each_command_is_in_one_place_once(self) -> None:
        places = [*self.model, *self.out.taken, *self.out.given_back]
        assert sorted(c.number for c in places) == list(range(len(self.put_so_far)))

    @invariant()
    def each_partition_is_taken_in_order(self) -> None:
        for partition in range(PARTITIONS):
            numbers = [c.number for c in self.out.taken if c.partition == partition]
            assert numbers == sorted(numbers), (partition, numbers)


TestBufferAgainstModel = BufferAgainstModel.TestCase


async def test_a_waiting_taker_wakes_at_a_put() -> None:
    buffer: CommandBuffer[Command] = CommandBuffer(lambda command: command.partition)
    command = Command(0, 0)
    asyncio.get_running_loop().call_soon(buffer.put, command)
    await asyncio.wait_for(buffer.wait(timeout_ms=600_000), WAIT_S)  # (not its own timeout)
    assert buffer.take(8) == [command]


async def test_a_waiting_taker_returns_at_its_timeout_with_nothing() -> None:
    buffer: CommandBuffer[Command] = CommandBuffer(lambda command: command.partition)
    await asyncio.wait_for(buffer.wait(timeout_ms=20), WAIT_S)
    assert not buffer and buffer.take(8) == []
