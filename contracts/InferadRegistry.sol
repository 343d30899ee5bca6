// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title inferad stakes, client deposits and per-epoch settlement
/// @notice Nodes stake ETH against their Ed25519 node key; clients deposit ETH that
/// pays for jobs. Once per epoch the oracle settles: it charges clients, slashes
/// cheaters (with an evidence hash anyone can fetch from the network) and commits a
/// Merkle root of every account's *cumulative* rewards, so a settlement costs O(1)
/// storage for any number of jobs and one claim covers every epoch so far.
/// @dev Invariant: address(this).balance == totalStaked + totalDeposits
///      + (totalRewards - totalClaimed) + feesAccrued.
contract InferadRegistry {
    struct Node {
        bytes32 edKey;
        uint256 stake;
        uint256 unbonding;
        uint64 unbondingAt;
    }

    struct Client {
        uint256 deposit;
        uint256 withdrawing;
        uint64 withdrawAt;
    }

    address public owner;
    address public oracle;
    uint256 public minStake;
    uint64 public unbondingDelay;
    uint64 public withdrawDelay;
    uint16 public protocolFeeBps;

    mapping(address => Node) public nodes;
    mapping(bytes32 => address) public nodeOfKey;
    mapping(address => Client) public clients;

    bytes32 public rewardsRoot;
    // One storage slot, written once per settlement. Rewards never exceed the funds
    // charged or slashed, all of which were once balances here, far below 2^192 wei.
    uint64 public lastEpoch;
    uint192 public totalRewards;
    uint256 public totalClaimed;
    mapping(address => uint256) public claimed;

    uint256 public totalStaked; // stake + unbonding of every node
    uint256 public totalDeposits; // deposit + withdrawing of every client
    uint256 public feesAccrued;

    error NotOwner();
    error NotOracle();
    error ZeroAmount();
    error StakeTooLow(uint256 stake, uint256 minStake);
    error AlreadyRegistered(address node);
    error KeyTaken(bytes32 edKey, address node);
    error NotRegistered(address node);
    error InsufficientStake(uint256 requested, uint256 stake);
    error InsufficientDeposit(uint256 requested, uint256 deposit);
    error NothingToWithdraw();
    error TooEarly(uint64 availableAt);
    error EpochAlreadySettled(uint256 epoch, uint256 lastEpoch);
    error LengthMismatch();
    error ChargeExceedsDeposit(address client, uint256 charge, uint256 deposit);
    error SlashExceedsStake(address node, uint256 amount, uint256 stake);
    error RewardsExceedIncome(uint256 rewards, uint256 income);
    error InvalidProof();
    error NothingToClaim();
    error ClaimExceedsRewards(uint256 amount, uint256 unclaimed);
    error FeeTooHigh(uint16 bps);
    error TransferFailed();

    event Registered(address indexed node, bytes32 indexed edKey, uint256 stake);
    event StakeAdded(address indexed node, uint256 amount, uint256 stake);
    event UnstakeRequested(address indexed node, uint256 amount, uint64 availableAt);
    event StakeWithdrawn(address indexed node, uint256 amount);
    event Deposited(address indexed client, uint256 amount, uint256 deposit);
    event DepositWithdrawRequested(address indexed client, uint256 amount, uint64 availableAt);
    event DepositWithdrawn(address indexed client, uint256 amount);
    event Charged(uint256 indexed epoch, address indexed client, uint256 amount);
    event Slashed(uint256 indexed epoch, address indexed node, uint256 amount, bytes32 evidenceHash);
    event Settled(
        uint256 indexed epoch, bytes32 rewardsRoot, uint256 charged, uint256 slashed, uint256 rewardsAdded,
        uint256 fee, bytes32 evidenceHash
    );
    event Claimed(address indexed account, uint256 amount, uint256 cumulative);
    event ParametersChanged(uint256 minStake, uint64 unbondingDelay, uint64 withdrawDelay, uint16 protocolFeeBps);
    event OracleChanged(address oracle);
    event FeesWithdrawn(address to, uint256 amount);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    modifier onlyOracle() {
        if (msg.sender != oracle) revert NotOracle();
        _;
    }

    constructor(address oracle_, uint256 minStake_, uint64 unbondingDelay_, uint64 withdrawDelay_, uint16 feeBps_) {
        owner = msg.sender;
        oracle = oracle_;
        _setParameters(minStake_, unbondingDelay_, withdrawDelay_, feeBps_);
        emit OracleChanged(oracle_);
    }

    // ------------------------------------------------------------------ nodes

    function register(bytes32 edKey) external payable {
        if (nodes[msg.sender].edKey != bytes32(0)) revert AlreadyRegistered(msg.sender);
        if (nodeOfKey[edKey] != address(0)) revert KeyTaken(edKey, nodeOfKey[edKey]);
        if (msg.value < minStake) revert StakeTooLow(msg.value, minStake);
        nodes[msg.sender].edKey = edKey;
        nodes[msg.sender].stake = msg.value;
        nodeOfKey[edKey] = msg.sender;
        totalStaked += msg.value;
        emit Registered(msg.sender, edKey, msg.value);
    }

    function addStake() external payable {
        if (msg.value == 0) revert ZeroAmount();
        Node storage n = nodes[msg.sender];
        if (n.edKey == bytes32(0)) revert NotRegistered(msg.sender);
        n.stake += msg.value;
        totalStaked += msg.value;
        emit StakeAdded(msg.sender, msg.value, n.stake);
    }

    /// @notice Move stake to unbonding; it stays slashable until withdrawn.
    function requestUnstake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Node storage n = nodes[msg.sender];
        if (n.edKey == bytes32(0)) revert NotRegistered(msg.sender);
        if (amount > n.stake) revert InsufficientStake(amount, n.stake);
        n.stake -= amount;
        n.unbonding += amount;
        n.unbondingAt = uint64(block.timestamp) + unbondingDelay;
        emit UnstakeRequested(msg.sender, amount, n.unbondingAt);
    }

    function withdraw() external {
        Node storage n = nodes[msg.sender];
        uint256 amount = n.unbonding;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < n.unbondingAt) revert TooEarly(n.unbondingAt);
        n.unbonding = 0;
        totalStaked -= amount;
        emit StakeWithdrawn(msg.sender, amount);
        _pay(msg.sender, amount);
    }

    /// @notice Whether `node` is staked: registered with at least minStake not unbonding.
    function isStaked(address node) external view returns (bool) {
        return nodes[node].edKey != bytes32(0) && nodes[node].stake >= minStake;
    }

    // ------------------------------------------------------------------ clients

    function deposit() external payable {
        if (msg.value == 0) revert ZeroAmount();
        Client storage c = clients[msg.sender];
        c.deposit += msg.value;
        totalDeposits += msg.value;
        emit Deposited(msg.sender, msg.value, c.deposit);
    }

    /// @notice Set part of the deposit aside; it can still be charged until withdrawn.
    function requestWithdrawDeposit(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Client storage c = clients[msg.sender];
        if (amount > c.deposit) revert InsufficientDeposit(amount, c.deposit);
        c.deposit -= amount;
        c.withdrawing += amount;
        c.withdrawAt = uint64(block.timestamp) + withdrawDelay;
        emit DepositWithdrawRequested(msg.sender, amount, c.withdrawAt);
    }

    function withdrawDeposit() external {
        Client storage c = clients[msg.sender];
        uint256 amount = c.withdrawing;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < c.withdrawAt) revert TooEarly(c.withdrawAt);
        c.withdrawing = 0;
        totalDeposits -= amount;
        emit DepositWithdrawn(msg.sender, amount);
        _pay(msg.sender, amount);
    }

    // ------------------------------------------------------------------ settlement

    /// @notice Settle one epoch: charge clients, slash nodes, add rewards under a new root.
    /// @param rewardsAdded how much the cumulative rewards committed by `root` grew this epoch;
    /// the rest of the income (charges + slashes) accrues as protocol fees.
    function settle(
        uint256 epoch,
        bytes32 root,
        uint256 rewardsAdded,
        address[] calldata chargedClients,
        uint256[] calldata charges,
        address[] calldata slashedNodes,
        uint256[] calldata slashAmounts,
        bytes32 evidenceHash
    ) external onlyOracle {
        if (epoch <= lastEpoch || epoch > type(uint64).max) revert EpochAlreadySettled(epoch, lastEpoch);
        if (chargedClients.length != charges.length || slashedNodes.length != slashAmounts.length) {
            revert LengthMismatch();
        }
        uint256 charged = _charge(epoch, chargedClients, charges);
        uint256 slashed = _slash(epoch, slashedNodes, slashAmounts, evidenceHash);
        _book(epoch, root, rewardsAdded, charged, slashed, evidenceHash);
    }

    function _book(uint256 epoch, bytes32 root, uint256 rewardsAdded, uint256 charged, uint256 slashed, bytes32 evidence)
        private
    {
        uint256 income = charged + slashed;
        if (rewardsAdded > income) revert RewardsExceedIncome(rewardsAdded, income);
        lastEpoch = uint64(epoch);
        rewardsRoot = root;
        totalRewards += uint192(rewardsAdded);
        feesAccrued += income - rewardsAdded;
        emit Settled(epoch, root, charged, slashed, rewardsAdded, income - rewardsAdded, evidence);
    }

    function _charge(uint256 epoch, address[] calldata who, uint256[] calldata amounts)
        private
        returns (uint256 total)
    {
        for (uint256 i = 0; i < who.length; i++) {
            Client storage c = clients[who[i]];
            uint256 amount = amounts[i];
            uint256 balance = c.deposit;
            if (amount <= balance) {
                c.deposit = balance - amount; // the common case reads one slot
            } else {
                uint256 available = balance + c.withdrawing;
                if (amount > available) revert ChargeExceedsDeposit(who[i], amount, available);
                c.withdrawing -= amount - balance;
                c.deposit = 0;
            }
            total += amount;
            emit Charged(epoch, who[i], amount);
        }
        totalDeposits -= total;
    }

    function _slash(uint256 epoch, address[] calldata who, uint256[] calldata amounts, bytes32 evidenceHash)
        private
        returns (uint256 total)
    {
        for (uint256 i = 0; i < who.length; i++) {
            Node storage n = nodes[who[i]];
            uint256 amount = amounts[i];
            uint256 available = n.stake + n.unbonding;
            if (amount > available) revert SlashExceedsStake(who[i], amount, available);
            if (amount <= n.stake) {
                n.stake -= amount;
            } else {
                n.unbonding -= amount - n.stake;
                n.stake = 0;
            }
            total += amount;
            emit Slashed(epoch, who[i], amount, evidenceHash);
        }
        totalStaked -= total;
    }

    /// @notice Claim everything credited to the caller so far.
    /// @param cumulative the caller's cumulative rewards in the latest root
    /// @param proof sorted-pair Merkle proof of keccak256(abi.encodePacked(caller, cumulative))
    function claim(uint256 cumulative, bytes32[] calldata proof) external {
        bytes32 node = keccak256(abi.encodePacked(msg.sender, cumulative));
        for (uint256 i = 0; i < proof.length; i++) {
            bytes32 sibling = proof[i];
            node = node < sibling ? keccak256(abi.encodePacked(node, sibling)) : keccak256(abi.encodePacked(sibling, node));
        }
        if (node != rewardsRoot) revert InvalidProof();
        uint256 already = claimed[msg.sender];
        if (cumulative <= already) revert NothingToClaim();
        uint256 amount = cumulative - already;
        if (amount > totalRewards - totalClaimed) revert ClaimExceedsRewards(amount, totalRewards - totalClaimed);
        claimed[msg.sender] = cumulative;
        totalClaimed += amount;
        emit Claimed(msg.sender, amount, cumulative);
        _pay(msg.sender, amount);
    }

    // ------------------------------------------------------------------ owner

    function setParameters(uint256 minStake_, uint64 unbondingDelay_, uint64 withdrawDelay_, uint16 feeBps_)
        external
        onlyOwner
    {
        _setParameters(minStake_, unbondingDelay_, withdrawDelay_, feeBps_);
    }

    function setOracle(address oracle_) external onlyOwner {
        oracle = oracle_;
        emit OracleChanged(oracle_);
    }

    function withdrawFees(address to) external onlyOwner {
        uint256 amount = feesAccrued;
        if (amount == 0) revert NothingToWithdraw();
        feesAccrued = 0;
        emit FeesWithdrawn(to, amount);
        _pay(to, amount);
    }

    function _setParameters(uint256 minStake_, uint64 unbondingDelay_, uint64 withdrawDelay_, uint16 feeBps_)
        private
    {
        if (feeBps_ > 10_000) revert FeeTooHigh(feeBps_);
        minStake = minStake_;
        unbondingDelay = unbondingDelay_;
        withdrawDelay = withdrawDelay_;
        protocolFeeBps = feeBps_;
        emit ParametersChanged(minStake_, unbondingDelay_, withdrawDelay_, feeBps_);
    }

    function _pay(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }
}
