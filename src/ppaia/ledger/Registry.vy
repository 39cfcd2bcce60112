# pragma version ~=0.4.3
"""
@title FLoBC-style federated-learning registry
@notice The ledger of who trains and who validates, which updates a quorum of validators accepted,
        and which model versions a quorum of validators released. The quorum is floor(2V/3) + 1 of the
        V registered validators, so a third of them cannot accept or release anything by themselves.
        Scores are fixed-point integers: a score of 1.0 is stored as SCORE_SCALE = 10**6.
        A trainer may submit up to `quota` updates per round (1 unless the owner set more before the
        first update: BAP's resubmissions), so the quota is one for the whole run and every round.
"""

SCORE_SCALE: public(constant(int256)) = 10**6


struct Update:
    trainer: address
    round: uint256
    base_round: uint256
    update_hash: bytes32
    valid_votes: uint256
    accepted: bool


struct Version:
    model_hash: bytes32
    score: int256
    round: uint256


event TrainerRegistered:
    trainer: indexed(address)

event ValidatorRegistered:
    validator: indexed(address)

event QuotaSet:
    quota: uint256

event UpdateSubmitted:
    update_id: indexed(uint256)
    trainer: indexed(address)
    round: uint256
    base_round: uint256
    update_hash: bytes32

event Voted:
    update_id: indexed(uint256)
    validator: indexed(address)
    valid: bool
    score: int256

event UpdateAccepted:
    update_id: indexed(uint256)

event ModelProposed:
    round: indexed(uint256)
    validator: indexed(address)
    model_hash: bytes32
    score: int256

event ModelReleased:
    version: indexed(uint256)
    round: indexed(uint256)
    model_hash: bytes32
    score: int256

event ScoreSet:
    trainer: indexed(address)
    validator: indexed(address)
    score: int256


owner: public(address)
is_trainer: public(HashMap[address, bool])
is_validator: public(HashMap[address, bool])
validator_count: public(uint256)

quota: public(uint256)  # updates a trainer may submit per round
update_count: public(uint256)
updates: HashMap[uint256, Update]
submitted: HashMap[address, HashMap[uint256, uint256]]  # trainer -> round -> updates submitted
voted: HashMap[uint256, HashMap[address, bool]]  # update id -> validator -> voted

version_count: public(uint256)
versions: HashMap[uint256, Version]  # version 1, 2, ...; 0 means none released yet
released_in: public(HashMap[uint256, uint256])  # round -> version released for it (0: none yet)
proposed: HashMap[uint256, HashMap[address, bool]]  # round -> validator -> proposed
support: HashMap[uint256, HashMap[bytes32, uint256]]  # round -> model hash -> proposals
score_sum: HashMap[uint256, HashMap[bytes32, int256]]  # round -> model hash -> sum of proposed scores

scores: public(HashMap[address, int256])  # trainer -> last reward-penalty score set by a validator


@deploy
def __init__():
    self.owner = msg.sender
    self.quota = 1


@internal
@view
def _quorum() -> uint256:
    return 2 * self.validator_count // 3 + 1


@external
@view
def quorum() -> uint256:
    """@notice Validators needed to accept an update or release a model: floor(2V/3) + 1."""
    return self._quorum()


@external
def register_trainer(trainer: address):
    assert msg.sender == self.owner, "not owner"
    assert trainer != empty(address), "zero address"
    assert not self.is_validator[trainer], "already a validator"
    assert not self.is_trainer[trainer], "already a trainer"
    self.is_trainer[trainer] = True
    log TrainerRegistered(trainer=trainer)


@external
def register_validator(validator: address):
    assert msg.sender == self.owner, "not owner"
    assert validator != empty(address), "zero address"
    assert not self.is_trainer[validator], "already a trainer"
    assert not self.is_validator[validator], "already a validator"
    self.is_validator[validator] = True
    self.validator_count += 1
    log ValidatorRegistered(validator=validator)


@external
def set_quota(quota: uint256):
    """
    @notice Let each trainer submit up to `quota` updates per round (owner only, before the first update
            is submitted, so that no round runs under two quotas). The latest one a round aggregates
            supersedes the trainer's earlier ones: the protocol's rule, not this contract's.
    """
    assert msg.sender == self.owner, "not owner"
    assert quota >= 1, "quota below 1"
    assert self.update_count == 0, "updates already submitted"
    self.quota = quota
    log QuotaSet(quota=quota)


@external
def submit_update(round: uint256, update_hash: bytes32, base_round: uint256) -> uint256:
    """
    @notice Record a trainer's update for a round (at most `quota` per trainer and round), trained
            from the model released for `base_round` (round - 1 when fresh, older when stale); returns its id.
    """
    assert self.is_trainer[msg.sender], "not a trainer"
    assert base_round < round, "base is not before the round"
    assert self.submitted[msg.sender][round] < self.quota, "round's quota used"
    self.submitted[msg.sender][round] += 1
    update_id: uint256 = self.update_count
    self.updates[update_id] = Update(
        trainer=msg.sender,
        round=round,
        base_round=base_round,
        update_hash=update_hash,
        valid_votes=0,
        accepted=False,
    )
    self.update_count = update_id + 1
    log UpdateSubmitted(
        update_id=update_id,
        trainer=msg.sender,
        round=round,
        base_round=base_round,
        update_hash=update_hash,
    )
    return update_id


@external
def vote(update_id: uint256, valid: bool, score: int256):
    """
    @notice A validator's verdict on an update. Acceptance is final: once a quorum voted valid the
            update stays accepted even if more validators are registered later.
    """
    assert self.is_validator[msg.sender], "not a validator"
    assert score >= 0 and score <= SCORE_SCALE, "score out of range"
    assert update_id < self.update_count, "unknown update"
    assert not self.voted[update_id][msg.sender], "already voted"
    self.voted[update_id][msg.sender] = True
    log Voted(update_id=update_id, validator=msg.sender, valid=valid, score=score)
    if valid:
        self.updates[update_id].valid_votes += 1
        if not self.updates[update_id].accepted and self.updates[update_id].valid_votes >= self._quorum():
            self.updates[update_id].accepted = True
            log UpdateAccepted(update_id=update_id)


@external
@view
def is_accepted(update_id: uint256) -> bool:
    assert update_id < self.update_count, "unknown update"
    return self.updates[update_id].accepted


@external
@view
def get_update(update_id: uint256) -> (address, uint256, uint256, bytes32, uint256, bool):
    """@notice (trainer, round, base round, update hash, valid votes, accepted) of an update."""
    assert update_id < self.update_count, "unknown update"
    u: Update = self.updates[update_id]
    return u.trainer, u.round, u.base_round, u.update_hash, u.valid_votes, u.accepted


@external
def propose_model(round: uint256, model_hash: bytes32, score: int256) -> uint256:
    """
    @notice A validator's proposal of the aggregated model for a round (one per validator per round).
            The proposal that brings a model hash to a quorum releases it as a new version, scored
            with the mean of its supporters' scores (rounded toward zero); returns that version,
            or 0 if nothing was released. A round releases at most one version.
    """
    assert self.is_validator[msg.sender], "not a validator"
    assert score >= 0 and score <= SCORE_SCALE, "score out of range"
    assert self.released_in[round] == 0, "round already released"
    assert self.version_count == 0 or round > self.versions[self.version_count].round, "round is not newer"
    assert not self.proposed[round][msg.sender], "already proposed"
    self.proposed[round][msg.sender] = True
    self.support[round][model_hash] += 1
    self.score_sum[round][model_hash] += score
    log ModelProposed(round=round, validator=msg.sender, model_hash=model_hash, score=score)
    supporters: uint256 = self.support[round][model_hash]
    if supporters < self._quorum():
        return 0
    version: uint256 = self.version_count + 1
    mean: int256 = self.score_sum[round][model_hash] // convert(supporters, int256)
    self.versions[version] = Version(model_hash=model_hash, score=mean, round=round)
    self.version_count = version
    self.released_in[round] = version
    log ModelReleased(version=version, round=round, model_hash=model_hash, score=mean)
    return version


@external
@view
def get_version(version: uint256) -> (bytes32, int256, uint256):
    """@notice (model hash, score, round) of a released version."""
    assert version >= 1 and version <= self.version_count, "unknown version"
    v: Version = self.versions[version]
    return v.model_hash, v.score, v.round


@external
@view
def latest_version() -> (uint256, bytes32, int256, uint256):
    """@notice (version, model hash, score, round) of the newest release; all zero before the first."""
    v: Version = self.versions[self.version_count]
    return self.version_count, v.model_hash, v.score, v.round


@external
def set_score(trainer: address, score: int256):
    """
    @notice Record a trainer's reward-penalty score; any validator may set it and the last one wins.
            Computing scores (and agreeing on them) is the protocol's job, not this contract's.
    """
    assert self.is_validator[msg.sender], "not a validator"
    assert score >= 0 and score <= SCORE_SCALE, "score out of range"
    assert self.is_trainer[trainer], "not a trainer"
    self.scores[trainer] = score
    log ScoreSet(trainer=trainer, validator=msg.sender, score=score)
